//! The store: SurrealDB (embedded SurrealKV by default, or a server over ws://) holding the
//! registry, the agents' last known state and the jobs.
//!
//! This module folder is the only place that writes SurrealQL: the rest of the coordinator calls
//! typed methods (`registry.rs`, `agents.rs`, `jobs.rs`). Every query goes through the private
//! `Store::query`, which binds parameters (never string formatting) and converts results to JSON. The schema is versioned in `meta:schema` and brought forward
//! by [`MIGRATIONS`] at start-up; nothing is ever dropped because the version changed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};
use surrealdb::engine::any::Any;
use surrealdb::engine::local::Db;
use surrealdb::Surreal;

use crate::registry::Kind;

mod agents;
mod cluster;
mod credentials;
mod jobs;
mod recorders;
mod registry;

pub use agents::AgentRow;
pub use cluster::{AgentLocation, MemberRow, Ownership};
pub use credentials::CredentialRow;
pub use jobs::{FleetUpdate, ListView};
use registry::RegistryCache;

/// Namespace and database used inside SurrealDB.
const NAMESPACE: &str = "tracevisor";
const DATABASE: &str = "registry";

/// Forward migrations, applied in order; entry `i` brings the schema to version `i + 1`.
/// Append only: never edit a migration that has shipped.
pub const MIGRATIONS: &[&str] = &[
    // 1: the registry of relays, clients and analyses servers.
    r#"
    DEFINE TABLE relay SCHEMAFULL;
    DEFINE FIELD hostname ON relay TYPE string;
    DEFINE FIELD ipv4 ON relay TYPE option<string>;
    DEFINE FIELD ipv6 ON relay TYPE option<string>;
    DEFINE FIELD ctrlport ON relay TYPE int ASSERT $value >= 1 AND $value <= 65535;
    DEFINE FIELD dataport ON relay TYPE int ASSERT $value >= 1 AND $value <= 65535;
    DEFINE INDEX relay_hostname ON relay FIELDS hostname UNIQUE;
    DEFINE SEQUENCE relay_id BATCH 1 START 1;

    DEFINE TABLE client SCHEMAFULL;
    DEFINE FIELD hostname ON client TYPE string;
    DEFINE FIELD ipv4 ON client TYPE option<string>;
    DEFINE FIELD ipv6 ON client TYPE option<string>;
    DEFINE FIELD sshport ON client TYPE int ASSERT $value >= 1 AND $value <= 65535;
    DEFINE FIELD sshuser ON client TYPE string;
    DEFINE INDEX client_hostname ON client FIELDS hostname UNIQUE;
    DEFINE SEQUENCE client_id BATCH 1 START 1;

    DEFINE TABLE analyses_server SCHEMAFULL;
    DEFINE FIELD hostname ON analyses_server TYPE string;
    DEFINE FIELD ipv4 ON analyses_server TYPE option<string>;
    DEFINE FIELD ipv6 ON analyses_server TYPE option<string>;
    DEFINE FIELD sshport ON analyses_server TYPE int ASSERT $value >= 1 AND $value <= 65535;
    DEFINE FIELD sshuser ON analyses_server TYPE string;
    DEFINE INDEX analyses_server_hostname ON analyses_server FIELDS hostname UNIQUE;
    DEFINE SEQUENCE analyses_server_id BATCH 1 START 1;
    "#,
    // 2: agents' last known state, keyed by their client id.
    r#"
    DEFINE TABLE agent SCHEMALESS;
    DEFINE INDEX agent_hostname ON agent FIELDS hostname UNIQUE;
    "#,
    // 3: trace jobs and their results; relays may say where relayd writes traces.
    r#"
    DEFINE FIELD output_dir ON relay TYPE option<string>;
    DEFINE TABLE job SCHEMALESS;
    DEFINE INDEX job_status ON job FIELDS status;
    DEFINE SEQUENCE job_id BATCH 1 START 1;
    "#,
    // 4: ids reserved in blocks of 100. With blocks of 1 every create also wrote the sequence's
    // row, so concurrent creates collided on it and were retried (the write p99 in
    // BENCHMARKS.md). Each sequence restarts at its next unused value, so no id is reused; a
    // restart may skip the rest of a block.
    // (`$next_<sequence>` is drawn by `migrate_to` before the migration's transaction: a draw
    // inside it would conflict with the redefinition.) With `ws://` and several coordinators
    // on one server, stop the others while one migrates: an id they draw between the draw and
    // the redefinition could be handed out again.
    r#"
    DEFINE SEQUENCE OVERWRITE relay_id BATCH 100 START $next_relay_id;
    DEFINE SEQUENCE OVERWRITE client_id BATCH 100 START $next_client_id;
    DEFINE SEQUENCE OVERWRITE analyses_server_id BATCH 100 START $next_analyses_server_id;
    DEFINE SEQUENCE OVERWRITE job_id BATCH 100 START $next_job_id;
    "#,
    // 5: per-agent credentials, issued by enrollment; only the secret's SHA-256 is kept.
    r#"
    DEFINE TABLE agent_credential SCHEMAFULL;
    DEFINE FIELD hostname ON agent_credential TYPE string;
    DEFINE FIELD secret_sha256 ON agent_credential TYPE string;
    DEFINE FIELD created ON agent_credential TYPE string;
    DEFINE FIELD created_from ON agent_credential TYPE string;
    DEFINE FIELD revoked ON agent_credential TYPE option<string>;
    DEFINE FIELD revoked_why ON agent_credential TYPE option<string>;
    DEFINE INDEX agent_credential_hostname ON agent_credential FIELDS hostname;
    "#,
    // 6: flight recorders (their hosts' states are not stored: agents report them).
    r#"
    DEFINE TABLE recorder SCHEMALESS;
    DEFINE SEQUENCE recorder_id BATCH 1 START 1;
    "#,
    // 7: several coordinators on one server (`store/cluster.rs`): their membership, which one
    // holds each agent's link (`agent.owner`, `agent.epoch`) and runs each job (`job.runner`).
    r#"
    DEFINE TABLE member SCHEMALESS;
    DEFINE INDEX agent_owner ON agent FIELDS owner;
    DEFINE INDEX job_runner ON job FIELDS runner;
    "#,
];

/// The id sequences; a migration may start one again at `$next_<name>`, its next unused value.
const SEQUENCES: [&str; 4] = ["relay_id", "client_id", "analyses_server_id", "job_id"];

/// User and password the coordinator signs in with to a SurrealDB server (root level).
#[derive(Clone, PartialEq, Eq)]
pub struct DbCredentials {
    pub user: String,
    pub pass: String,
}

impl std::fmt::Debug for DbCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCredentials")
            .field("user", &self.user)
            .field("pass", &"<hidden>")
            .finish()
    }
}

/// How long a coordinator waits for another one's migration (its lease) before giving up.
const MIGRATION_WAIT: Duration = Duration::from_secs(120);

/// Longest wait for one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// How many times a write that lost an optimistic-concurrency race is retried.
const CONFLICT_RETRIES: u32 = 20;

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The hostname is already registered for this kind.
    #[error("{kind} hostname {hostname:?} is already registered")]
    Duplicate {
        kind: &'static str,
        hostname: String,
    },
    /// The database could not be opened.
    #[error("cannot open database {url}: {message}")]
    Open { url: String, message: String },
    /// The data was written by a newer Tracevisor.
    #[error("database schema version {found} is newer than this tracevisor supports ({supported}); upgrade tracevisor")]
    TooNew { found: u64, supported: u64 },
    /// Any other database failure.
    #[error("database error: {0}")]
    Db(String),
    /// A stored record did not have the expected shape.
    #[error("stored record is malformed: {0}")]
    Corrupt(String),
}

impl From<surrealdb::Error> for StoreError {
    fn from(e: surrealdb::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// How much memory the embedded storage engine (SurrealKV) may hold. Its defaults scale with
/// the machine (a 1 GiB memtable and a block cache of half the RAM on a 24 GiB host), far more
/// than a registry needs; the memtable is an arena whose pages become resident as writes land,
/// so without a bound the coordinator's memory grows with every write until that size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Size of the in-memory write buffer, flushed to disk when full. Must hold the largest
    /// single transaction (a job result of up to the 16 MiB frame limit).
    pub memtable_bytes: u64,
    /// Cache of on-disk blocks.
    pub block_cache_bytes: u64,
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            memtable_bytes: 64 << 20,
            block_cache_bytes: 32 << 20,
        }
    }
}

/// The connection: an embedded datastore this process opened, or a SurrealDB server.
#[derive(Clone)]
enum Conn {
    /// The SDK's handle, and the datastore under it (shut down by [`Store::close`]).
    Embedded(Surreal<Db>, Arc<surrealdb_engine_local::Datastore>),
    Remote(Surreal<Any>),
}

/// Handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Conn,
    /// Registry records held in memory when this process is the database's only writer
    /// (embedded SurrealKV locks its directory; `mem://` is private), so reads never query.
    cache: Option<Arc<RegistryCache>>,
}

/// Opens the embedded datastore the way the SDK's own `connect` does (build without
/// maintenance tasks, check the on-disk version, bootstrap, then start the tasks), except that
/// the storage engine gets its memory limits: the SDK passes no configuration to an embedded
/// datastore, and in 3.3.5 the URL's query keys are prefixed `datastore_` so they never reach
/// SurrealKV's `surrealkv_*` keys.
async fn open_embedded(
    url: &str,
    limits: StorageLimits,
) -> Result<(Surreal<Db>, Arc<surrealdb_engine_local::Datastore>), String> {
    let config = surrealdb_cnf::ConfigMap::empty()
        .with_key_value(
            "surrealkv_max_memtable_size",
            limits.memtable_bytes.to_string(),
        )
        .with_key_value(
            "surrealkv_block_cache_capacity",
            limits.block_cache_bytes.to_string(),
        );
    let datastore = surrealdb_engine_local::Datastore::builder()
        .with_config(config)
        .with_auth(false)
        .without_maintenance_tasks()
        .build_with_path(url)
        .await
        .map_err(|e| e.to_string())?;
    datastore.check_version().await.map_err(|e| e.to_string())?;
    datastore.bootstrap().await.map_err(|e| e.to_string())?;
    datastore.start_maintenance_tasks();
    let db = Surreal::<Db>::unstable_from_datastore(datastore.clone(), None)
        .await
        .map_err(|e| e.to_string())?;
    Ok((db, datastore))
}

/// Selects the namespace and database every query runs in.
async fn select_database<C: surrealdb::Connection>(db: &Surreal<C>) -> surrealdb::Result<()> {
    db.use_ns(NAMESPACE).use_db(DATABASE).await.map(|_| ())
}

impl Store {
    /// Connects (creating the embedded database if needed) and migrates the schema.
    pub async fn open(url: &str, limits: StorageLimits) -> Result<Store, StoreError> {
        Store::open_as(url, limits, None).await
    }

    /// Like [`Store::open`], signing in to a server with `credentials`. On a server, the
    /// migrations run under a lease (`meta:migration_lease`), so coordinators started together
    /// migrate one at a time and the others find the schema current.
    pub async fn open_as(
        url: &str,
        limits: StorageLimits,
        credentials: Option<&DbCredentials>,
    ) -> Result<Store, StoreError> {
        let mut store = Store::connect(url, limits, credentials).await?;
        if matches!(store.db, Conn::Remote(_)) {
            store.migrate_under_lease().await?;
        } else {
            store.migrate().await?;
        }
        if matches!(store.db, Conn::Embedded(..)) {
            let cache = RegistryCache::new();
            for kind in [Kind::Relays, Kind::Clients, Kind::AnalysesServers] {
                for record in store.list(kind).await? {
                    cache.put(kind, record);
                }
            }
            store.cache = Some(Arc::new(cache));
        }
        Ok(store)
    }

    /// Connects without migrating or loading the cache.
    async fn connect(
        url: &str,
        limits: StorageLimits,
        credentials: Option<&DbCredentials>,
    ) -> Result<Store, StoreError> {
        let open_error = |e: &dyn std::fmt::Display| StoreError::Open {
            url: url.to_owned(),
            message: e.to_string(),
        };
        let embedded = ["surrealkv://", "mem://", "memory://"]
            .iter()
            .any(|scheme| url.starts_with(scheme));
        let db = if embedded {
            if let Some(path) = url.strip_prefix("surrealkv://") {
                if let Some(parent) = std::path::Path::new(path).parent() {
                    std::fs::create_dir_all(parent).map_err(|e| open_error(&e))?;
                }
            }
            let (db, datastore) = open_embedded(url, limits)
                .await
                .map_err(|e| open_error(&e))?;
            select_database(&db).await.map_err(|e| open_error(&e))?;
            Conn::Embedded(db, datastore)
        } else {
            let db = surrealdb::engine::any::connect(url)
                .await
                .map_err(|e| open_error(&e))?;
            if let Some(c) = credentials {
                db.signin(surrealdb::opt::auth::Root {
                    username: c.user.clone(),
                    password: c.pass.clone(),
                })
                .await
                .map_err(|e| open_error(&format!("sign-in as {}: {e}", c.user)))?;
            }
            // A server has no namespace or database until one is defined; coordinators
            // starting together define them at once, and all but one are retried.
            let mut attempt = 0;
            loop {
                let defined = tokio::time::timeout(
                    QUERY_TIMEOUT,
                    db.query(format!(
                        "DEFINE NAMESPACE IF NOT EXISTS {NAMESPACE}; USE NS {NAMESPACE}; DEFINE DATABASE IF NOT EXISTS {DATABASE};"
                    )),
                )
                .await
                .map_err(|_| open_error(&"no answer within 15 s"))?
                .and_then(|r| r.check());
                match defined {
                    Ok(_) => break,
                    Err(e) if is_conflict(&e.to_string()) && attempt < CONFLICT_RETRIES => {
                        attempt += 1;
                        let jitter = rand::random::<u64>() % (1 << attempt.min(6));
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                    Err(e) => return Err(open_error(&e)),
                }
            }
            select_database(&db).await.map_err(|e| open_error(&e))?;
            Conn::Remote(db)
        };
        Ok(Store { db, cache: None })
    }

    /// The id of this registry, created once: part of every session name, so agents shared by
    /// several registries (or tests on one machine) never touch each other's sessions.
    pub async fn instance_id(&self) -> Result<String, StoreError> {
        for _ in 0..3 {
            let rows = self
                .query("SELECT VALUE id_text FROM meta:instance", json!({}))
                .await?;
            if let Some(id) = rows.first().and_then(Json::as_str) {
                return Ok(id.to_owned());
            }
            let new = format!("{:08x}", rand::random::<u32>());
            // CREATE fails if another coordinator created it first; then read theirs.
            let _ = self
                .query(
                    "CREATE meta:instance SET id_text = $id",
                    json!({ "id": new }),
                )
                .await;
        }
        Err(StoreError::Db(
            "cannot create the registry instance id".into(),
        ))
    }

    /// The schema version of the open database.
    pub async fn schema_version(&self) -> Result<u64, StoreError> {
        let rows = self
            .query("SELECT VALUE version FROM meta:schema", json!({}))
            .await?;
        Ok(rows.first().and_then(Json::as_u64).unwrap_or(0))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_to(MIGRATIONS.len()).await
    }

    /// Migrates while holding the migration lease: one coordinator migrates, the others wait
    /// for it (a lease of a coordinator that died runs out after 60 s) and then find nothing
    /// to do.
    async fn migrate_under_lease(&self) -> Result<(), StoreError> {
        let holder = format!("{:016x}", rand::random::<u64>());
        let deadline = tokio::time::Instant::now() + MIGRATION_WAIT;
        loop {
            if self.take_migration_lease(&holder).await? {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Db(format!(
                    "another coordinator held the schema migration lease for {} s; retry, or delete meta:migration_lease if its holder is gone",
                    MIGRATION_WAIT.as_secs()
                )));
            }
            tracing::info!("another coordinator is migrating the schema; waiting for its lease");
            tokio::time::sleep(Duration::from_millis(250 + rand::random::<u64>() % 250)).await;
        }
        let migrated = self.migrate().await;
        if let Err(error) = self.release_migration_lease(&holder).await {
            tracing::warn!(%error, "could not give the migration lease back (it runs out in 60 s)");
        }
        migrated
    }

    /// Applies the migrations up to schema version `target`.
    async fn migrate_to(&self, target: usize) -> Result<(), StoreError> {
        self.query("DEFINE TABLE IF NOT EXISTS meta SCHEMALESS", json!({}))
            .await?;
        let current = self.schema_version().await?;
        let supported = MIGRATIONS.len() as u64;
        if current > supported {
            return Err(StoreError::TooNew {
                found: current,
                supported,
            });
        }
        let pending = MIGRATIONS.iter().enumerate().take(target);
        for (index, migration) in pending.skip(current as usize) {
            let version = index as u64 + 1;
            // The migration and its version bump commit together or not at all.
            let sql = format!(
                "BEGIN TRANSACTION; {migration}; UPSERT meta:schema SET version = $version, migrated_at = time::now(); COMMIT TRANSACTION;"
            );
            let mut vars = json!({ "version": version });
            for sequence in SEQUENCES {
                let name = format!("next_{sequence}");
                if migration.contains(&format!("${name}")) {
                    // Drawn (and so never handed out) in a transaction of its own.
                    let next = self
                        .query("RETURN sequence::nextval($seq)", json!({ "seq": sequence }))
                        .await?;
                    vars[name] = next.first().cloned().unwrap_or(Json::Null);
                }
            }
            self.query(&sql, vars).await?;
            tracing::info!(version, "database schema migrated");
        }
        Ok(())
    }

    /// Closes the embedded datastore and waits until it is closed (a server connection needs
    /// nothing). Every other clone of this store must be gone: the SDK shuts the datastore
    /// down itself (maintenance tasks, then the storage engine) once its last handle is
    /// dropped, and this waits for that shutdown to finish instead of letting the runtime cut
    /// it off at exit. (Shutting it down here as well would run the sequence twice; the second
    /// pass fails on the closed engine.)
    pub async fn close(self) {
        let Conn::Embedded(db, datastore) = self.db else {
            return;
        };
        drop(db);
        drop(self.cache);
        // The SDK's session task holds the datastore until its shutdown has finished.
        let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
        while Arc::strong_count(&datastore) > 1 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    seconds = QUERY_TIMEOUT.as_secs(),
                    holders = Arc::strong_count(&datastore) - 1,
                    "the database did not close in time"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::debug!("database closed");
    }

    /// Runs SurrealQL with bound parameters and returns the rows of the last statement as JSON.
    /// Private to the store: callers use its typed methods.
    async fn query(&self, sql: &str, vars: Json) -> Result<Vec<Json>, StoreError> {
        // A database that stops answering (a full disk can wedge the storage engine's commit
        // pipeline) must turn into an error answer, not a request that hangs.
        let asked = std::time::Instant::now();
        let answer = match &self.db {
            Conn::Embedded(db, _) => {
                tokio::time::timeout(QUERY_TIMEOUT, db.query(sql).bind(vars)).await
            }
            Conn::Remote(db) => tokio::time::timeout(QUERY_TIMEOUT, db.query(sql).bind(vars)).await,
        };
        crate::metrics::database_answered(asked.elapsed());
        let response = answer.map_err(|_| {
            StoreError::Db(format!(
                "the database did not answer within {} s (disk full or storage stalled?)",
                QUERY_TIMEOUT.as_secs()
            ))
        })??;
        let mut response = response;
        let mut errors: Vec<(usize, surrealdb::Error)> =
            response.take_errors().into_iter().collect();
        if !errors.is_empty() {
            // In a BEGIN ... COMMIT block that failed, the other statements only say they were
            // "not executed due to a failed transaction": the cause is the one that says more
            // (a conflict, a unique index, ...).
            errors.sort_by_key(|(index, _)| *index);
            let cause = errors
                .iter()
                .position(|(_, e)| {
                    !e.to_string()
                        .contains("not executed due to a failed transaction")
                })
                .unwrap_or(0);
            return Err(errors.swap_remove(cause).1.into());
        }
        let last = response.num_statements().saturating_sub(1);
        let value: surrealdb::types::Value = response.take(last)?;
        Ok(match value.into_json_value() {
            Json::Array(rows) => rows,
            Json::Null => Vec::new(),
            other => vec![other],
        })
    }

    /// Like [`Store::query`], retrying while the transaction loses an optimistic-concurrency race.
    async fn write(&self, sql: &str, vars: Json) -> Result<Vec<Json>, StoreError> {
        let mut attempt = 0;
        loop {
            match self.query(sql, vars.clone()).await {
                Err(StoreError::Db(message))
                    if is_conflict(&message) && attempt < CONFLICT_RETRIES =>
                {
                    attempt += 1;
                    tracing::debug!(attempt, "write lost a transaction conflict, retrying");
                    let jitter = rand::random::<u64>() % (1 << attempt.min(6));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                other => return other,
            }
        }
    }
}

fn is_conflict(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    // A failed BEGIN ... COMMIT block with no statement naming a cause lost a race at its
    // commit (`query` returns the cause when one is named).
    m.contains("conflict")
        || m.contains("can be retried")
        || m.contains("retry")
        || m.contains("not executed due to a failed transaction")
}

/// Parses the integer key out of a record id rendered as JSON (`"relay:5"`).
pub fn record_key(value: &Json) -> Result<u64, StoreError> {
    let text = value
        .as_str()
        .ok_or_else(|| StoreError::Corrupt(format!("id {value} is not a record id")))?;
    text.rsplit_once(':')
        .and_then(|(_, key)| key.parse::<u64>().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("id {text:?} has no integer key")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::HostRecord;

    fn relay(hostname: &str) -> HostRecord {
        HostRecord::new(Kind::Relays, hostname.into(), Some("10.0.0.1".into()), None)
    }

    #[tokio::test]
    async fn crud_ids_and_duplicates() {
        let store = Store::open("mem://", StorageLimits::default())
            .await
            .unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            MIGRATIONS.len() as u64
        );
        let a = store.create(Kind::Relays, &relay("a")).await.unwrap();
        let b = store.create(Kind::Relays, &relay("b")).await.unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!(a.ctrlport, Some(5342));
        assert!(matches!(
            store.create(Kind::Relays, &relay("a")).await,
            Err(StoreError::Duplicate { .. })
        ));
        // A client may share a relay's hostname: uniqueness is per kind.
        let c = store
            .create(
                Kind::Clients,
                &HostRecord::new(Kind::Clients, "a".into(), None, Some("::1".into())),
            )
            .await
            .unwrap();
        assert_eq!(c.id, 1);
        assert!(store.delete(Kind::Relays, 2).await.unwrap());
        assert!(!store.delete(Kind::Relays, 2).await.unwrap());
        let d = store.create(Kind::Relays, &relay("d")).await.unwrap();
        assert_eq!(
            d.id, 4,
            "ids are not reused after a delete (3 went to the failed duplicate)"
        );
        let mut changed = a.clone();
        changed.hostname = "d".into();
        assert!(matches!(
            store.replace(Kind::Relays, 1, &changed).await,
            Err(StoreError::Duplicate { .. })
        ));
        changed.hostname = "a2".into();
        assert_eq!(
            store
                .replace(Kind::Relays, 1, &changed)
                .await
                .unwrap()
                .unwrap()
                .hostname,
            "a2"
        );
        assert!(store
            .replace(Kind::Relays, 99, &changed)
            .await
            .unwrap()
            .is_none());
        let list: Vec<u64> = store
            .list(Kind::Relays)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(list, [1, 4]);
        assert_eq!(
            store.get(Kind::Relays, 4).await.unwrap().unwrap().hostname,
            "d"
        );
        assert!(store.get(Kind::Relays, 2).await.unwrap().is_none());
    }

    /// Migration 4 (ids in blocks) on a database that handed out ids one at a time: no id is
    /// reused, and one run hands out consecutive ids. (Restarts: `registry_api`.)
    #[tokio::test]
    async fn ids_in_blocks_never_reuse_an_id() {
        let store = Store::connect("mem://", StorageLimits::default(), None)
            .await
            .unwrap();
        store.migrate_to(3).await.unwrap();
        for name in ["a", "b", "c"] {
            store.create(Kind::Relays, &relay(name)).await.unwrap();
        }
        assert!(store.delete(Kind::Relays, 3).await.unwrap());
        store.migrate().await.unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            MIGRATIONS.len() as u64
        );
        let ids: Vec<u64> = [
            store.create(Kind::Relays, &relay("d")).await.unwrap().id,
            store.create(Kind::Relays, &relay("e")).await.unwrap().id,
        ]
        .to_vec();
        assert!(ids[0] > 3, "id 3 was handed out before: {ids:?}");
        assert_eq!(ids[1], ids[0] + 1, "consecutive within a run: {ids:?}");
        let job = store
            .query("RETURN sequence::nextval('job_id')", json!({}))
            .await
            .unwrap();
        assert!(job[0].as_u64().unwrap() >= 1);
    }
}
