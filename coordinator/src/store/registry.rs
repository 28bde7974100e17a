//! The registry of relays, clients and analyses servers: typed CRUD, and the write-through cache
//! used when this process is the database's only writer.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value as Json};

use super::{record_key, Store, StoreError};
use crate::registry::{HostRecord, Kind};

/// The registry in memory, written through: a record enters the cache only after its write
/// committed. Writes to the same id are serialized by a sharded lock so the cache applies
/// them in commit order; ids are never reused, so a deleted id stays deleted.
pub(super) struct RegistryCache {
    kinds: std::sync::RwLock<CachedKinds>,
    shards: Vec<tokio::sync::Mutex<()>>,
}

/// Records by kind and id, and ids by kind and hostname.
#[derive(Default)]
struct CachedKinds {
    records: HashMap<Kind, BTreeMap<u64, HostRecord>>,
    names: HashMap<(Kind, String), u64>,
}

const CACHE_SHARDS: usize = 64;

impl RegistryCache {
    pub(super) fn new() -> RegistryCache {
        RegistryCache {
            kinds: Default::default(),
            shards: (0..CACHE_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CachedKinds> {
        self.kinds.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CachedKinds> {
        self.kinds.write().unwrap_or_else(|p| p.into_inner())
    }

    fn list(&self, kind: Kind) -> Vec<HostRecord> {
        self.read()
            .records
            .get(&kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn get(&self, kind: Kind, id: u64) -> Option<HostRecord> {
        self.read()
            .records
            .get(&kind)
            .and_then(|m| m.get(&id).cloned())
    }

    fn by_hostname(&self, kind: Kind, hostname: &str) -> Option<HostRecord> {
        let kinds = self.read();
        let id = kinds.names.get(&(kind, hostname.to_owned()))?;
        kinds.records.get(&kind).and_then(|m| m.get(id).cloned())
    }

    fn shard(&self, id: u64) -> &tokio::sync::Mutex<()> {
        &self.shards[(id % CACHE_SHARDS as u64) as usize]
    }

    pub(super) fn put(&self, kind: Kind, record: HostRecord) {
        let mut kinds = self.write();
        let previous = kinds
            .records
            .entry(kind)
            .or_default()
            .insert(record.id, record.clone());
        if let Some(old) = previous {
            kinds.names.remove(&(kind, old.hostname));
        }
        kinds.names.insert((kind, record.hostname), record.id);
    }

    fn remove(&self, kind: Kind, id: u64) {
        let mut kinds = self.write();
        if let Some(old) = kinds.records.get_mut(&kind).and_then(|m| m.remove(&id)) {
            kinds.names.remove(&(kind, old.hostname));
        }
    }
}

impl Store {
    /// Lists the records of a kind in id order.
    pub async fn list(&self, kind: Kind) -> Result<Vec<HostRecord>, StoreError> {
        if let Some(cache) = &self.cache {
            return Ok(cache.list(kind));
        }
        let rows = self
            .query(
                "SELECT * FROM type::table($tb) ORDER BY id",
                json!({ "tb": kind.table() }),
            )
            .await?;
        rows.into_iter().map(|r| host_from_row(kind, r)).collect()
    }

    /// One record by id.
    pub async fn get(&self, kind: Kind, id: u64) -> Result<Option<HostRecord>, StoreError> {
        if let Some(cache) = &self.cache {
            return Ok(cache.get(kind, id));
        }
        let rows = self
            .query(
                "SELECT * FROM type::record($tb, $id)",
                json!({ "tb": kind.table(), "id": id }),
            )
            .await?;
        rows.into_iter()
            .next()
            .map(|r| host_from_row(kind, r))
            .transpose()
    }

    /// One record by hostname.
    pub async fn find_by_hostname(
        &self,
        kind: Kind,
        hostname: &str,
    ) -> Result<Option<HostRecord>, StoreError> {
        if let Some(cache) = &self.cache {
            return Ok(cache.by_hostname(kind, hostname));
        }
        self.find_by_hostname_in_db(kind, hostname).await
    }

    /// One record by hostname, read from the database whatever the cache holds.
    async fn find_by_hostname_in_db(
        &self,
        kind: Kind,
        hostname: &str,
    ) -> Result<Option<HostRecord>, StoreError> {
        let rows = self
            .query(
                "SELECT * FROM type::table($tb) WHERE hostname = $hostname LIMIT 1",
                json!({ "tb": kind.table(), "hostname": hostname }),
            )
            .await?;
        rows.into_iter()
            .next()
            .map(|r| host_from_row(kind, r))
            .transpose()
    }

    /// Creates a record with the next id of its kind; ids are never reused.
    pub async fn create(&self, kind: Kind, record: &HostRecord) -> Result<HostRecord, StoreError> {
        let vars = json!({
            "tb": kind.table(),
            "seq": format!("{}_id", kind.table()),
            "data": record.content(kind),
        });
        let rows = self
            .write(
                "CREATE type::record($tb, sequence::nextval($seq)) CONTENT $data RETURN AFTER",
                vars,
            )
            .await
            .map_err(|e| duplicate(e, kind, &record.hostname));
        if let (Err(StoreError::Duplicate { .. }), Some(cache)) = (&rows, &self.cache) {
            // The record exists though the cache lacks it (a write that timed out here but
            // committed): bring the cache back in line so the next lookup finds it.
            if let Ok(Some(existing)) = self.find_by_hostname_in_db(kind, &record.hostname).await {
                cache.put(kind, existing);
            }
        }
        let rows = rows?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Db("create returned no record".into()))?;
        let created = host_from_row(kind, row)?;
        if let Some(cache) = &self.cache {
            // A new id: nothing else writes it yet.
            cache.put(kind, created.clone());
        }
        Ok(created)
    }

    /// Replaces the fields of an existing record; `None` when the id is unknown.
    pub async fn replace(
        &self,
        kind: Kind,
        id: u64,
        record: &HostRecord,
    ) -> Result<Option<HostRecord>, StoreError> {
        let vars = json!({ "tb": kind.table(), "id": id, "data": record.content(kind) });
        let _order = match &self.cache {
            Some(cache) => Some(cache.shard(id).lock().await),
            None => None,
        };
        let rows = self
            .write(
                "UPDATE type::record($tb, $id) CONTENT $data RETURN AFTER",
                vars,
            )
            .await
            .map_err(|e| duplicate(e, kind, &record.hostname))?;
        let updated = rows
            .into_iter()
            .next()
            .map(|r| host_from_row(kind, r))
            .transpose()?;
        if let (Some(cache), Some(record)) = (&self.cache, &updated) {
            cache.put(kind, record.clone());
        }
        Ok(updated)
    }

    /// Deletes a record; `false` when the id is unknown.
    pub async fn delete(&self, kind: Kind, id: u64) -> Result<bool, StoreError> {
        let _order = match &self.cache {
            Some(cache) => Some(cache.shard(id).lock().await),
            None => None,
        };
        let rows = self
            .write(
                "DELETE type::record($tb, $id) RETURN BEFORE",
                json!({ "tb": kind.table(), "id": id }),
            )
            .await?;
        if let Some(cache) = &self.cache {
            cache.remove(kind, id);
        }
        Ok(!rows.is_empty())
    }
}

fn duplicate(error: StoreError, kind: Kind, hostname: &str) -> StoreError {
    match error {
        StoreError::Db(message) if message.contains("already contains") => StoreError::Duplicate {
            kind: kind.singular(),
            hostname: hostname.to_owned(),
        },
        other => other,
    }
}

/// Reads a stored registry row back.
fn host_from_row(kind: Kind, row: Json) -> Result<HostRecord, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("{} record: {what}", kind.singular()));
    let id = record_key(row.get("id").unwrap_or(&Json::Null))?;
    let text = |key: &str| row.get(key).and_then(Json::as_str).map(str::to_owned);
    let port = |key: &str| -> Result<Option<u16>, StoreError> {
        row.get(key)
            .filter(|v| !v.is_null())
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| corrupt(key))
            })
            .transpose()
    };
    Ok(HostRecord {
        id,
        hostname: text("hostname").ok_or_else(|| corrupt("hostname"))?,
        ipv4: text("ipv4"),
        ipv6: text("ipv6"),
        ctrlport: port("ctrlport")?,
        dataport: port("dataport")?,
        sshport: port("sshport")?,
        sshuser: text("sshuser"),
        output_dir: text("output_dir"),
    })
}
