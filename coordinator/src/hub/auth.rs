//! Failed enrollment-token checks per source address: a peer guessing tokens is slowed to a
//! trickle without the token being compared at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Failed agent authentications tolerated per source address and window before answering 429.
const AUTH_FAILURES_PER_WINDOW: u32 = 20;
/// The window of [`AUTH_FAILURES_PER_WINDOW`].
const AUTH_FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Source addresses tracked at most by the limiter (oldest windows are dropped beyond).
const AUTH_FAILURE_TRACKED: usize = 10_000;

/// Counts failed enrollment-token checks per source address, so a peer guessing tokens is
/// slowed to a trickle without the token being compared at all.
#[derive(Default)]
pub(super) struct AuthFailures {
    by_ip: Mutex<HashMap<IpAddr, (std::time::Instant, u32)>>,
}

impl AuthFailures {
    pub(super) fn blocked(&self, ip: IpAddr) -> bool {
        let map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).is_some_and(|(since, n)| {
            since.elapsed() < AUTH_FAILURE_WINDOW && *n >= AUTH_FAILURES_PER_WINDOW
        })
    }

    pub(super) fn record(&self, ip: IpAddr) {
        let mut map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= AUTH_FAILURE_TRACKED {
            map.retain(|_, (since, _)| since.elapsed() < AUTH_FAILURE_WINDOW);
        }
        let entry = map.entry(ip).or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= AUTH_FAILURE_WINDOW {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 += 1;
    }
}
