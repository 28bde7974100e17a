//! Per-agent credentials: who a link is, decided before the upgrade.
//!
//! The shared enrollment token opens only an enrollment link (`tracesd enroll`): one `Enroll`
//! frame, answered with the host's own credential (`tvc1_<id>_<secret>`, see
//! [`tracevisor_protocol::split_credential`]) once it is stored, then closed. Every other link
//! authenticates with a credential and speaks only for the hostname it was issued to. The
//! store keeps the secret's SHA-256; the hub keeps every credential in memory (loaded at
//! start, written through), so checking one on a reconnect costs a hash and a map lookup, not
//! a database query. Revoking one closes the links that use it at once.

use std::collections::HashMap;
use std::net::IpAddr;

use rand::RngCore as _;
use time::OffsetDateTime;
use tracevisor_protocol::CREDENTIAL_PREFIX;

use super::{rfc3339, Hub, RegisterError};
use crate::registry::Kind;
use crate::secrets::secret_eq;
use crate::store::{CredentialRow, StoreError};

/// Who a link is, from the secret its upgrade request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A host's own credential: the link registers `hostname` and nothing else.
    Host {
        /// The credential's id.
        credential: String,
        /// The hostname it was issued to.
        hostname: String,
    },
    /// The shared enrollment token: the link may only ask for a credential.
    Enrollment,
}

/// A credential as the hub checks it.
#[derive(Debug, Clone)]
pub(super) struct Credential {
    hostname: String,
    secret_sha256: String,
    /// When and why, once revoked.
    revoked: Option<(String, String)>,
    /// The address it was enrolled from.
    created_from: String,
    /// The built-in local agent's: made at start, never stored nor listed.
    local: bool,
}

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CheckError {
    /// No credential has this id, or the secret does not match.
    Unknown,
    /// It was revoked: the hostname it was issued to, when and why.
    Revoked {
        hostname: String,
        when: String,
        why: String,
    },
}

/// Hex SHA-256 of a credential's secret part.
fn sha256_hex(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    hex(digest.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Credentials by id.
#[derive(Default)]
pub(super) struct Credentials {
    pub(super) by_id: HashMap<String, Credential>,
}

impl Credentials {
    pub(super) fn check(&self, id: &str, secret: &str) -> Result<String, CheckError> {
        let Some(c) = self.by_id.get(id) else {
            return Err(CheckError::Unknown);
        };
        if !secret_eq(&sha256_hex(secret), &c.secret_sha256) {
            return Err(CheckError::Unknown);
        }
        match &c.revoked {
            Some((when, why)) => Err(CheckError::Revoked {
                hostname: c.hostname.clone(),
                when: when.clone(),
                why: why.clone(),
            }),
            None => Ok(c.hostname.clone()),
        }
    }

    /// How many credentials are live, and where `hostname`'s live one was enrolled from, if
    /// it has one (one pass over the map).
    fn live(&self, hostname: &str) -> (usize, Option<String>) {
        let mut count = 0;
        let mut from = None;
        for c in self
            .by_id
            .values()
            .filter(|c| c.revoked.is_none() && !c.local)
        {
            count += 1;
            if c.hostname == hostname {
                from = Some(c.created_from.clone());
            }
        }
        (count, from)
    }

    fn insert_row(&mut self, row: &CredentialRow) {
        self.by_id.insert(
            row.id.clone(),
            Credential {
                hostname: row.hostname.clone(),
                secret_sha256: row.secret_sha256.clone(),
                revoked: row
                    .revoked
                    .clone()
                    .map(|when| (when, row.revoked_why.clone().unwrap_or_default())),
                created_from: row.created_from.clone(),
                local: false,
            },
        );
    }
}

impl Hub {
    pub(super) fn credentials(&self) -> std::sync::MutexGuard<'_, Credentials> {
        self.credentials.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads every stored credential (once, at start-up).
    pub(super) async fn load_credentials(&self) -> Result<(), StoreError> {
        let rows = self.store.credentials().await?;
        let mut credentials = self.credentials();
        for row in &rows {
            credentials.insert_row(row);
        }
        Ok(())
    }

    /// Checks a credential presented at the upgrade; the hostname it speaks for.
    pub(super) fn check_credential(&self, id: &str, secret: &str) -> Result<String, CheckError> {
        self.credentials().check(id, secret)
    }

    /// Why credential `id` no longer opens links, if it was revoked. (Credentials are never
    /// forgotten, and the upgrade checked this one exists.)
    pub(super) fn revoked_reason(&self, id: &str) -> Option<String> {
        self.credentials()
            .by_id
            .get(id)
            .and_then(|c| c.revoked.as_ref().map(|(_, why)| why.clone()))
    }

    /// A credential for the built-in local agent of `hostname`: valid for this process only,
    /// neither stored nor listed.
    pub fn local_credential(&self, hostname: &str) -> String {
        let (id, secret) = (random_hex(8), random_hex(32));
        self.credentials().by_id.insert(
            id.clone(),
            Credential {
                hostname: hostname.to_owned(),
                secret_sha256: sha256_hex(&secret),
                revoked: None,
                created_from: String::new(),
                local: true,
            },
        );
        format!("{CREDENTIAL_PREFIX}{id}_{secret}")
    }

    /// Issues a credential for `hostname` to an enrollment link from `peer`, under the rules a
    /// new agent's hello meets: a hostname that is already a client may be enrolled only from
    /// its addresses (`agent_takeover = "pin-address"`); a new one cannot be a relay's, an
    /// analyses server's or (from another host) a loopback name. The host's earlier
    /// credentials are revoked in the same transaction and their links closed.
    pub(super) async fn enroll(
        &self,
        hostname: &str,
        peer: IpAddr,
    ) -> Result<String, RegisterError> {
        // One enrollment or revocation at a time: each writes the store, then the map, and two
        // interleaved could leave the map saying otherwise than the store.
        let _one = self.credential_writes.lock().await;
        let (live, live_from) = self.credentials().live(hostname);
        match self.store.find_by_hostname(Kind::Clients, hostname).await? {
            Some(existing) => {
                let pinned = self.store.agent_pinned_peers(existing.id).await?;
                self.check_takeover(&existing, &pinned, hostname, peer)?;
            }
            None => {
                self.may_claim(hostname, peer).await?;
                // Enrolled but not registered yet (no client record): the host's live
                // credential pins the name to the address it was enrolled from, so another
                // token holder cannot replace it before the host first connects.
                let elsewhere = live_from.filter(|from| *from != peer.to_string());
                if let Some(from) = elsewhere {
                    if self.takeover == super::TakeoverPolicy::PinAddress && !peer.is_loopback() {
                        return Err(RegisterError::Refused(format!(
                            "hostname {hostname} was enrolled from {from}; enroll it from there, or revoke its credential first (tracevisor credentials revoke {hostname})"
                        )));
                    }
                }
            }
        }
        // At most two credentials per host are kept (below), and a live one per host: live
        // credentials are bounded so that the table and the map are too. Revoking frees room.
        if live >= 2 * self.max_links {
            return Err(RegisterError::Refused(format!(
                "this coordinator holds {live} live agent credentials, twice max_agent_links ({}): revoke unused ones (tracevisor credentials) or raise max_agent_links",
                self.max_links
            )));
        }
        let (id, secret) = (random_hex(8), random_hex(32));
        let now = rfc3339(OffsetDateTime::now_utc());
        let row = CredentialRow {
            id: id.clone(),
            hostname: hostname.to_owned(),
            secret_sha256: sha256_hex(&secret),
            created: now.clone(),
            created_from: peer.to_string(),
            revoked: None,
            revoked_why: None,
        };
        let why = format!("replaced by a new enrollment of {hostname} from {peer}");
        self.store.issue_credential(&row, &why).await?;
        let mut replaced: Vec<String> = Vec::new();
        {
            let mut credentials = self.credentials();
            // As in the store, in one pass: the host's rows revoked before go, its live one is
            // revoked.
            credentials.by_id.retain(|old, c| {
                if c.hostname != hostname || c.local {
                    return true;
                }
                if c.revoked.is_some() {
                    return false;
                }
                c.revoked = Some((now.clone(), why.clone()));
                replaced.push(old.clone());
                true
            });
            credentials.insert_row(&row);
        }
        for old in &replaced {
            self.disconnect_credential(old, &why);
        }
        tracing::info!(%hostname, credential = %id, %peer, replaced = replaced.len(), "agent enrolled");
        Ok(format!("{CREDENTIAL_PREFIX}{id}_{secret}"))
    }

    /// Every stored credential, with whether a link uses it now.
    pub async fn list_credentials(&self) -> Result<Vec<(CredentialRow, bool)>, StoreError> {
        let rows = self.store.credentials().await?;
        let live: std::collections::HashSet<String> = self
            .links()
            .values()
            .map(|l| l.credential.clone())
            .collect();
        Ok(rows
            .into_iter()
            .map(|mut row| {
                row.secret_sha256.clear();
                let connected = live.contains(&row.id);
                (row, connected)
            })
            .collect())
    }

    /// Revokes credential `id` (durably first), closes the links using it and refuses it from
    /// then on. `None` when there is no such credential.
    pub async fn revoke_credential(
        &self,
        id: &str,
        why: &str,
    ) -> Result<Option<CredentialRow>, StoreError> {
        let _one = self.credential_writes.lock().await;
        let now = rfc3339(OffsetDateTime::now_utc());
        let Some(mut row) = self.store.revoke_credential(id, &now, why).await? else {
            return Ok(None);
        };
        if let Some(c) = self.credentials().by_id.get_mut(id) {
            if c.revoked.is_none() {
                c.revoked = Some((
                    row.revoked.clone().unwrap_or_default(),
                    row.revoked_why.clone().unwrap_or_default(),
                ));
            }
        }
        let closed = self.disconnect_credential(id, why);
        tracing::warn!(credential = %id, hostname = %row.hostname, links_closed = closed, why, "agent credential revoked");
        row.secret_sha256.clear();
        Ok(Some(row))
    }

    /// Loads credential `id` from the store: one another coordinator of the cluster issued
    /// after this one loaded them. Whether it was found.
    pub(super) async fn fetch_credential(&self, id: &str) -> Result<bool, StoreError> {
        let Some(row) = self.store.credential(id).await? else {
            return Ok(false);
        };
        self.credentials().insert_row(&row);
        Ok(true)
    }

    /// Applies the revocations recorded (by any coordinator of the cluster) at or after
    /// `since`, RFC 3339: the links using a newly revoked credential close. How many closed.
    pub async fn refresh_revoked(&self, since: &str) -> Result<usize, StoreError> {
        let rows = self.store.credentials_revoked_since(since).await?;
        let mut closed = 0;
        for row in rows {
            let known = self
                .credentials()
                .by_id
                .get(&row.id)
                .is_some_and(|c| c.revoked.is_some());
            self.credentials().insert_row(&row);
            if !known {
                let why = row.revoked_why.clone().unwrap_or_default();
                let n = self.disconnect_credential(&row.id, &why);
                if n > 0 {
                    tracing::warn!(credential = %row.id, hostname = %row.hostname, links_closed = n, why = %why, "agent credential revoked by another coordinator of the cluster");
                }
                closed += n;
            }
        }
        Ok(closed)
    }

    /// Closes the links authenticated with credential `id`; how many.
    fn disconnect_credential(&self, id: &str, why: &str) -> usize {
        let links = self.links();
        let mut closed = 0;
        for link in links.values().filter(|l| l.credential == id) {
            *link.revoked_why.lock().unwrap_or_else(|p| p.into_inner()) = why.to_owned();
            link.revoked.cancel();
            closed += 1;
        }
        closed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_checked_by_its_secret_and_refused_once_revoked() {
        let mut credentials = Credentials::default();
        let secret = random_hex(32);
        let row = CredentialRow {
            id: random_hex(8),
            hostname: "web-1".into(),
            secret_sha256: sha256_hex(&secret),
            created: "2026-01-01T00:00:00Z".into(),
            created_from: "10.0.0.7".into(),
            revoked: None,
            revoked_why: None,
        };
        credentials.insert_row(&row);
        assert_eq!(credentials.check(&row.id, &secret), Ok("web-1".into()));
        assert_eq!(
            credentials.check(&row.id, &random_hex(32)),
            Err(CheckError::Unknown)
        );
        assert_eq!(
            credentials.check(&random_hex(8), &secret),
            Err(CheckError::Unknown)
        );
        credentials.insert_row(&CredentialRow {
            revoked: Some("2026-01-02T00:00:00Z".into()),
            revoked_why: Some("lost laptop".into()),
            ..row.clone()
        });
        assert_eq!(
            credentials.check(&row.id, &secret),
            Err(CheckError::Revoked {
                hostname: "web-1".into(),
                when: "2026-01-02T00:00:00Z".into(),
                why: "lost laptop".into(),
            })
        );
        let shaped = format!("{CREDENTIAL_PREFIX}{}_{secret}", row.id);
        assert_eq!(
            tracevisor_protocol::split_credential(&shaped),
            Some((row.id.as_str(), secret.as_str()))
        );
    }
}
