//! Storage: one portable schema on SQLite or PostgreSQL through `sqlx`'s `Any` driver, with
//! migrations per database under `server/migrations/`. All SQL uses `$N` placeholders (both
//! drivers accept them), integers are `BIGINT`, times are Unix seconds.
//!
//! Transactions that write start with their write, so SQLite takes its write lock first and two
//! writers never deadlock upgrading read locks. On SQLite the statements run on the calling
//! thread through rusqlite, answered in the `Any` driver's types (`store/direct.rs`), so the storage
//! functions are the same for both engines.

pub mod applications;
pub mod audit;
pub mod authentications;
pub mod bypass;
pub mod ciba;
pub mod enrollments;
pub mod flows;
pub mod follow_ups;
pub mod nonces;
pub mod oidc_authorizations;
pub mod oidc_tokens;
pub mod otp;
pub mod otp_challenges;
pub mod pairing_codes;
pub mod policies;
pub mod qr_sessions;
pub mod retention;
pub mod secrets;
pub mod server_keys;
pub mod throttle;
pub mod users;
pub mod webhooks;

mod checkpoint;
pub mod connection_use;
mod direct;
mod durability;
mod error;
pub mod events;
mod executors;
pub mod fido_credentials;
mod pg_connections;
mod plan_cache;
#[cfg(test)]
mod query_plans;
mod read_conn;
pub mod write;
mod writer;

/// A fresh SQLite database in a temporary folder (kept while the `TempDir` lives) with one
/// application, for the storage modules' unit tests.
#[cfg(test)]
pub(crate) async fn test_db_with_app() -> (
    tempfile::TempDir,
    Database,
    tessera_protocol::ids::ApplicationId,
) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let db = Database::connect(&url, 4).await.expect("database");
    let app = test_application(&db).await;
    (dir, db, app.id)
}

/// A new application in `db` (a new id, and an API key digest of its own, so that it can be
/// made in a PostgreSQL database that tests share), for the storage modules' unit tests.
#[cfg(test)]
pub(crate) async fn test_application(db: &Database) -> applications::Application {
    let app = applications::Application {
        id: tessera_protocol::ids::ApplicationId::generate(),
        name: "App".into(),
        created_at: 0,
    };
    applications::insert(db, &app, &format!("digest {}", app.id))
        .await
        .expect("application");
    app
}

/// The PostgreSQL database a unit test runs its PostgreSQL half on: `DATABASE_URL` when it
/// points at PostgreSQL (starts with `postgres`).
///
/// Without one the test's PostgreSQL half is skipped: `None`, after `skipped: set
/// DATABASE_URL=postgres://... to {purpose}` on stderr (`purpose` says what the test would have
/// done, e.g. `"take advisory locks"`). Unless `TESSERA_REQUIRE_POSTGRES=1` (as CI sets in
/// `scripts/test.sh`): then a missing or non-PostgreSQL `DATABASE_URL` fails the test (panics),
/// so the PostgreSQL half can never be skipped silently, as the integration tests'
/// `Backend::postgres()` (`tests/src/lib.rs`) does.
#[cfg(test)]
pub(crate) fn postgres_url_for_tests(purpose: &str) -> Option<String> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| url.starts_with("postgres"));
    if url.is_none() {
        assert!(
            std::env::var("TESSERA_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "TESSERA_REQUIRE_POSTGRES=1 but DATABASE_URL does not point at PostgreSQL \
             (needed to {purpose})"
        );
        eprintln!("skipped: set DATABASE_URL=postgres://... to {purpose}");
    }
    url
}

/// Runs `sql` on a connection of its own to the PostgreSQL database at `url`.
#[cfg(test)]
async fn postgres_execute_alone(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
    sqlx::query(sql).execute(&mut conn).await.expect(sql);
    let _ = conn.close().await;
}

/// A new schema (named from `prefix`) of the PostgreSQL database at `url`, and a URL whose
/// connections use it (its `search_path`): for a test whose statements reach every row of a
/// table (a housekeeping delete, a plan on filled tables), kept apart from the other tests
/// sharing the database. [`postgres_drop_schema`] removes it.
#[cfg(test)]
pub(crate) async fn postgres_fresh_schema(url: &str, prefix: &str) -> (String, String) {
    let schema = format!(
        "{prefix}_{}_{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    postgres_execute_alone(url, &format!("CREATE SCHEMA {schema}")).await;
    let sep = if url.contains('?') { '&' } else { '?' };
    (
        format!("{url}{sep}options=-c%20search_path%3D{schema}"),
        schema,
    )
}

/// Drops a schema [`postgres_fresh_schema`] made, with everything in it.
#[cfg(test)]
pub(crate) async fn postgres_drop_schema(url: &str, schema: &str) {
    postgres_execute_alone(url, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};
use zeroize::Zeroizing;

use crate::config::CommitDurability;
pub use connection_use::{ConnectionKind, ConnectionUse};
pub use error::StoreError;
pub use executors::Statements;
pub(crate) use pg_connections::HeldConnection;
pub use read_conn::{ReadConn, ReadHandle};
pub use write::{Committed, Ticket, Write, WriteConn};

/// Whether `row` of a `LEFT JOIN` holds a match: its `column`, a text column never NULL in the
/// joined table, is not NULL.
pub(crate) fn is_joined(row: &sqlx::any::AnyRow, column: &str) -> Result<bool, StoreError> {
    use sqlx::Row;
    Ok(row.try_get::<Option<String>, _>(column)?.is_some())
}

/// The rows of a one-to-many `LEFT JOIN`, read back: the one side from the first row (`one`),
/// the many side from each row holding a match (`each`; [`is_joined`] by `column`): a row
/// without one is the one side alone. `None` without rows.
pub(crate) fn one_with_joined<O, M>(
    rows: &[sqlx::any::AnyRow],
    column: &str,
    one: impl FnOnce(&sqlx::any::AnyRow) -> Result<O, StoreError>,
    each: impl Fn(&sqlx::any::AnyRow) -> Result<M, StoreError>,
) -> Result<Option<(O, Vec<M>)>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut many = Vec::with_capacity(rows.len());
    for row in rows {
        if is_joined(row, column)? {
            many.push(each(row)?);
        }
    }
    Ok(Some((one(first)?, many)))
}

/// `columns` (a statement's comma-separated column list) as columns of the table named `alias`
/// in a join (`alias.column`), leaving out those in `given`: columns the join selects from
/// another table under the same name and value.
pub(crate) fn qualified_columns(columns: &str, alias: &str, given: &[&str]) -> String {
    columns
        .split(',')
        .map(str::trim)
        .filter(|column| !given.contains(column))
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `condition`, a parenthesised `EXISTS (SELECT …)` that a PostgreSQL write ends with, with the
/// rows it finds locked against deletion until the write commits (`FOR KEY SHARE`, which
/// ordinary updates of those rows do not wait for). A deletion that came first is waited for,
/// and the check then finds no row; one that comes after waits for the write's commit. The QR
/// answer, the fallback's move and a request's admission check their device this way.
pub(crate) fn key_share_locked(condition: &str) -> String {
    let open = condition.strip_suffix(')').unwrap_or(condition);
    format!("{open} FOR KEY SHARE)")
}

/// `update` (an `UPDATE` ending in its `WHERE` condition) for a write whose loss in a crash
/// loses nothing anyone was told, as a lease's is: on PostgreSQL it commits without waiting for
/// its WAL record to reach the disk (`synchronous_commit` off for its own transaction only, set
/// by the statement itself, so no extra round trip). Nothing that depends on it can outlive it:
/// the WAL is written in order, and a later commit that waits for its flush (the move a claim
/// allows) flushes this record with it; a crash before that loses the lease, as if it had lapsed.
/// PostgreSQL only: SQLite's commits are flushed (or not) by the writer's one setting.
pub(crate) fn unflushed(update: &str) -> String {
    format!(
        "WITH unflushed AS MATERIALIZED \
         (SELECT set_config('synchronous_commit', 'off', true) AS setting) \
         {update} AND EXISTS (SELECT 1 FROM unflushed)"
    )
}

/// `url` (a `postgres://` URL) with the setting `name` = `value` added to the options its
/// sessions start with, after any it already has (a later one wins).
pub(crate) fn postgres_url_with_option(url: &str, name: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options%5B{name}%5D={value}")
}

/// The setting `name` as a session of `db` reports it on a request's connection and inside a
/// write transaction (the two must agree).
#[cfg(test)]
pub(crate) async fn shown_setting(db: &Database, name: &str) -> (String, String) {
    let show = format!("SHOW {name}");
    let read: String = sqlx::query_scalar(&show)
        .fetch_one(db.pool())
        .await
        .expect("read");
    let mut w = db.write().await.expect("write");
    let written: String = sqlx::query_scalar(&show)
        .fetch_one(&mut w)
        .await
        .expect("in a write");
    w.commit().await.expect("commit");
    (read, written)
}

/// The second key of a PostgreSQL advisory lock on `parts` (the first key says what the lock
/// serialises): the first four bytes of the SHA-256 of the parts, each followed by a 0x01 byte.
/// Computed here rather than by the database, so the same in every instance and version. Two
/// keys that collide only make unrelated writes take turns.
pub(crate) fn lock_key(parts: &[&str]) -> i32 {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([1u8]);
    }
    let digest = hash.finalize();
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite (a file).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The database: connections with the schema migrated.
///
/// On SQLite, statements run on the calling thread (`store/direct.rs`): writes on one writer
/// connection that writers take in turn, in the order they came, starting their transactions
/// with `BEGIN IMMEDIATE`, so no writer ever sleeps on `busy_timeout` waiting for another writer
/// of this process; reads on connections of their own beside it (WAL). sqlx's pools migrate the
/// schema and serve the few statements that need a driver connection. On PostgreSQL, requests
/// run their statements, reads and writes, on connections of their own, given back without a
/// round trip (`store/pg_connections.rs`), their transactions too; sqlx's pool migrates the
/// schema. No connection is pinged before it is handed out: a dead connection fails its
/// statement, which is answered as unavailability.
#[derive(Clone)]
pub struct Database {
    readers: AnyPool,
    /// Where single reads run ([`Database::pool`]).
    reads: Statements,
    /// Where single writes run ([`Database::writer`]).
    writes: Statements,
    /// Where write transactions and a request's own connection come from.
    own: OwnConnections,
    writer: AnyPool,
    engine: Engine,
    url: Arc<Zeroizing<String>>,
    /// The data key sealing secret columns, once [`Database::open_secrets`] opened it.
    secrets: Option<Arc<crate::secrets::DataKey>>,
    /// SQLite: the WAL checkpoints, run beside the writer ([`checkpoint`]); stops with the last
    /// clone of this handle.
    checkpointer: Option<Arc<checkpoint::Checkpointer>>,
    /// PostgreSQL: the margin of a quota checked under a shared admission lock
    /// ([`Database::admission_margin`]).
    admission_margin: i64,
}

/// The connections the store keeps itself, by engine.
#[derive(Clone)]
enum OwnConnections {
    /// The one writer connection every write transaction takes its turn on.
    SqliteWriter(Arc<writer::DirectWriter>),
    /// The requests' connections, given back without a round trip
    /// (`store/pg_connections.rs`).
    Postgres(pg_connections::PgConnections),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Database({:?})", self.engine)
    }
}

impl Database {
    /// Connects to `url` (`sqlite://FILE`, created if missing, or `postgres://…`) and runs the
    /// migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with(url, max_connections, Duration::from_secs(10), None).await
    }

    /// [`Database::connect`], giving up on a connection after `acquire_timeout` (the request
    /// is then answered as unavailable), its commits returning as `commit_durability` says
    /// (unset: each engine's own way, see [`CommitDurability`]).
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        commit_durability: Option<CommitDurability>,
    ) -> Result<Self, StoreError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let (engine, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let rest = rest.trim_start_matches("//");
            let sep = if rest.contains('?') { '&' } else { '?' };
            let url = if rest.contains("mode=") {
                format!("sqlite://{rest}")
            } else {
                format!("sqlite://{rest}{sep}mode=rwc")
            };
            (Engine::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (
                Engine::Postgres,
                plan_cache::postgres_url_with_generic_plans(&durability::postgres_url_with(
                    url,
                    commit_durability,
                )),
            )
        } else {
            return Err(StoreError::UnsupportedDatabase);
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|_| StoreError::UnsupportedDatabase)?
            .disable_statement_logging();
        let synchronous = durability::sqlite_synchronous(commit_durability);
        let pool_options = || {
            let options = AnyPoolOptions::new()
                .test_before_acquire(false)
                .acquire_timeout(acquire_timeout);
            if engine == Engine::Sqlite {
                options.after_connect(move |conn, _| {
                    Box::pin(async move {
                        // Only another process (the admin command line) can hold the write
                        // lock this long; this process's writers queue for their connection.
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str())
                            .await?;
                        // A statement's transient tables and sorts stay in memory: on the
                        // default, some create, write and delete a file in /var/tmp each time.
                        conn.execute("PRAGMA temp_store = MEMORY").await?;
                        // Checkpoints run beside the writer (`checkpoint`); a commit
                        // checkpoints by itself only if they fall this far behind.
                        conn.execute(
                            format!(
                                "PRAGMA wal_autocheckpoint = {}",
                                checkpoint::WRITER_AUTOCHECKPOINT_PAGES
                            )
                            .as_str(),
                        )
                        .await?;
                        Ok(())
                    })
                })
            } else {
                options
            }
        };
        let mut admission_margin = 0;
        let (readers, reads, writer, writes, own, checkpointer) = match engine {
            Engine::Sqlite => {
                let writer = pool_options()
                    .max_connections(1)
                    .connect_with(options.clone())
                    .await?;
                // Persistent per database file: readers never block the writer.
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&writer)
                    .await?;
                set_file_private(&url);
                SQLITE_MIGRATIONS
                    .run(&writer)
                    .await
                    .map_err(StoreError::Migration)?;
                let filename = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?
                    .get_filename()
                    .to_path_buf();
                // From here on the pool's writer only prepares and describes statements:
                // every write takes its turn on this connection.
                let direct_writer = Arc::new(writer::DirectWriter::open(
                    &filename,
                    acquire_timeout,
                    synchronous,
                )?);
                let checkpointer =
                    checkpoint::Checkpointer::start(options.clone(), direct_writer.clone()).await?;
                let readers = pool_options()
                    .max_connections(max_connections.max(1))
                    .connect_with(options)
                    .await?;
                let reads = Statements::direct_reads(
                    Arc::new(direct::DirectSqlite::open(&filename, synchronous)?),
                    direct_writer.clone(),
                    readers.clone(),
                );
                let writes = Statements::direct_writes(direct_writer.clone(), writer.clone());
                (
                    readers,
                    reads,
                    writer,
                    writes,
                    OwnConnections::SqliteWriter(direct_writer),
                    Some(Arc::new(checkpointer)),
                )
            }
            Engine::Postgres => {
                // Requests run on connections of their own, given back without a round trip;
                // sqlx's pool (one connection, closed a minute after its last use) migrates
                // the schema when the server starts and prepares statements.
                let requests = pg_connections::PgConnections::new(
                    options.clone(),
                    max_connections,
                    acquire_timeout,
                );
                let pool = pool_options()
                    .max_connections(1)
                    .idle_timeout(Duration::from_secs(60))
                    .connect_with(options)
                    .await?;
                POSTGRES_MIGRATIONS
                    .run(&pool)
                    .await
                    .map_err(StoreError::Migration)?;
                admission_margin =
                    sqlx::query_scalar("SELECT current_setting('max_connections')::BIGINT")
                        .fetch_one(&pool)
                        .await?;
                let statements = Statements::postgres(requests.clone(), pool.clone());
                (
                    pool.clone(),
                    statements.clone(),
                    pool,
                    statements,
                    OwnConnections::Postgres(requests),
                    None,
                )
            }
        };
        Ok(Self {
            readers,
            reads,
            writer,
            writes,
            own,
            engine,
            url: Arc::new(Zeroizing::new(url)),
            secrets: None,
            checkpointer,
            admission_margin,
        })
    }

    /// The executor for single reads (and the odd write that needs no transaction): on
    /// PostgreSQL the pool, on SQLite connections used on the calling thread ([`Statements`]).
    pub fn pool(&self) -> &Statements {
        &self.reads
    }

    /// The executor for single-statement writes, each committed by itself (on SQLite: in a
    /// turn of the one writer connection).
    pub fn writer(&self) -> &Statements {
        &self.writes
    }

    /// Starts a [`Write`]: on SQLite a turn of the writer connection, its `BEGIN IMMEDIATE`
    /// sent with its first statement; on PostgreSQL an ordinary transaction.
    pub async fn write(&self) -> Result<Write<'static>, StoreError> {
        match &self.own {
            OwnConnections::SqliteWriter(writer) => Ok(Write::sqlite(writer.write_turn().await?)),
            OwnConnections::Postgres(connections) => {
                Write::postgres_held(connections.acquire().await?).await
            }
        }
    }

    /// [`Database::write`] for a request that holds `conn` (from [`Database::reader`]): on
    /// PostgreSQL on `conn` itself, so the request uses one connection; on SQLite on the
    /// writer, as every write.
    pub async fn write_on<'c>(&self, conn: &'c mut ReadConn) -> Result<Write<'c>, StoreError> {
        if let OwnConnections::SqliteWriter(writer) = &self.own {
            return Ok(Write::sqlite(writer.write_turn().await?));
        }
        match conn.held_connection() {
            Some(held) => Write::postgres_on(held).await,
            None => self.write().await,
        }
    }

    /// One reader connection for a request that reads several things: its reads run on it, one
    /// after the other, instead of each taking a pooled connection of its own; on PostgreSQL
    /// its write transaction can run on it too ([`Database::write_on`]).
    pub async fn reader(&self) -> Result<ReadConn, StoreError> {
        match &self.own {
            OwnConnections::Postgres(connections) => {
                Ok(ReadConn::held(connections.acquire().await?))
            }
            OwnConnections::SqliteWriter(_) => Ok(ReadConn::direct(self.reads.clone())),
        }
    }

    /// Opens the data key that seals secret columns (see [`secrets::open`]) with the master key,
    /// if any, and keeps it for the store functions of this handle and its clones made after.
    pub async fn open_secrets(
        &mut self,
        master_key: Option<&dyn crate::secrets::KeyEncryptionKey>,
        now: i64,
    ) -> Result<secrets::Opened, StoreError> {
        let (key, opened) = secrets::open(self, master_key, now).await?;
        self.secrets = Some(Arc::new(key));
        Ok(opened)
    }

    /// The data key, or [`StoreError::SecretsLocked`] before [`Database::open_secrets`].
    pub(crate) fn secrets(&self) -> Result<&crate::secrets::DataKey, StoreError> {
        self.secrets.as_deref().ok_or(StoreError::SecretsLocked)
    }

    /// The engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// How busy the connections requests wait for are: PostgreSQL's request connections, or
    /// SQLite's one writer (see [`connection_use`]).
    pub fn connection_use(&self) -> ConnectionUse {
        match &self.own {
            OwnConnections::SqliteWriter(writer) => writer.connection_use(),
            OwnConnections::Postgres(connections) => connections.connection_use(),
        }
    }

    /// When this database's commits return, as its sessions are set up (with
    /// `--commit-durability` unset, PostgreSQL's is the database's or role's own setting).
    pub async fn commit_durability(&self) -> Result<CommitDurability, StoreError> {
        durability::in_effect(self).await
    }

    /// The margin an application's pending-request quota is checked with under a shared
    /// admission lock (`authentications::AdmissionLock::Shared`): every transaction the
    /// database could be running at once, PostgreSQL's `max_connections` (read when connecting);
    /// 0 on SQLite.
    pub(crate) fn admission_margin(&self) -> i64 {
        self.admission_margin
    }

    /// The URL connected to (may hold a password: never log it).
    pub(crate) fn url(&self) -> &str {
        self.url.as_str()
    }

    /// A trivial query, for health checks, on the connections requests read on. It never waits
    /// for a writer's turn: under load a health check would queue behind every writer and a
    /// load balancer take a busy instance for a dead one.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    /// How many of the migrations this build knows are not applied to the database (0: the
    /// schema is current). Migrations applied by a newer build do not count.
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        use sqlx::Row;
        let migrator = match self.engine {
            Engine::Sqlite => &SQLITE_MIGRATIONS,
            Engine::Postgres => &POSTGRES_MIGRATIONS,
        };
        let rows = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(self.pool())
            .await?;
        let applied = rows
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect::<Result<std::collections::HashSet<i64>, _>>()?;
        Ok(migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .filter(|m| !applied.contains(&m.version))
            .count())
    }

    /// Writes a consistent copy of a SQLite database, while it is in use, to `path`
    /// (`VACUUM INTO`: a new, compacted database file; the file must not exist or be empty).
    /// PostgreSQL databases are copied with `pg_dump`: [`StoreError::UnsupportedDatabase`].
    pub async fn backup_into(&self, path: &str) -> Result<(), StoreError> {
        if self.engine != Engine::Sqlite {
            return Err(StoreError::UnsupportedDatabase);
        }
        sqlx::query("VACUUM INTO $1")
            .bind(path)
            .execute(&self.readers)
            .await?;
        Ok(())
    }

    /// Closes the pools and stops the checkpoints.
    pub async fn close(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.stop();
        }
        self.reads.close();
        self.writes.close();
        if let OwnConnections::Postgres(connections) = &self.own {
            connections.close().await;
        }
        self.readers.close().await;
        self.writer.close().await;
    }
}

/// Makes a SQLite database file (and its WAL and shared-memory files) readable by its owner
/// only: it holds seeds and keys.
fn set_file_private(url: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = url.trim_start_matches("sqlite://");
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path == ":memory:" {
            return;
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{path}{suffix}");
            if std::path::Path::new(&file).exists() {
                let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

/// Whether a database error is a unique-constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.code().as_deref() == Some("23505")
                || db.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

#[cfg(test)]
mod migration_tests {
    use super::SQLITE_MIGRATIONS;
    use sqlx::migrate::Migrator;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
    use std::borrow::Cow;
    use std::str::FromStr;

    /// A database whose schema stops before migration `version`.
    async fn migrated_before(version: i64) -> (tempfile::TempDir, SqlitePool) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let options = SqliteConnectOptions::from_str(&url)
            .expect("url")
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePool::connect_with(options).await.expect("open");
        let earlier = Migrator {
            migrations: Cow::Owned(
                SQLITE_MIGRATIONS
                    .iter()
                    .filter(|m| m.version < version)
                    .cloned()
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        earlier.run(&pool).await.expect("earlier migrations");
        (dir, pool)
    }

    async fn pending_rows(pool: &SqlitePool) -> Vec<(String, i64, i64, i64)> {
        sqlx::query_as(
            "SELECT application_id, expires_at, shard, pending FROM pending_expiries \
             ORDER BY application_id, expires_at, shard",
        )
        .fetch_all(pool)
        .await
        .expect("pending rows")
    }

    /// The application `app_1`, which the requests of these tests belong to.
    async fn insert_application(pool: &SqlitePool) {
        sqlx::query(
            "INSERT INTO applications (id, name, api_key_digest, created_at) \
             VALUES ('app_1', 'App', 'digest', 1)",
        )
        .execute(pool)
        .await
        .expect("application");
    }

    async fn insert_pending(pool: &SqlitePool, id: &str, expires_at: i64) {
        sqlx::query(
            "INSERT INTO authentications (id, application_id, user_id, enrollment_id, kind, \
             signed_request, parameters_digest, nonce, require_user_verification, state, \
             created_at, expires_at) \
             VALUES ($1, 'app_1', 'alice', 'enr_1', 'approval', '', '', '', 0, 'pending', 1, $2)",
        )
        .bind(id)
        .bind(expires_at)
        .execute(pool)
        .await
        .expect("request");
    }

    /// Migration 0045 tallies the pushes already stored, so the counts read from the tallies
    /// start where the counts of the requests stood.
    #[tokio::test]
    async fn the_push_tallies_start_from_the_pushes_already_stored() {
        let (_dir, pool) = migrated_before(45).await;
        insert_application(&pool).await;
        for (id, user, created_at, counted) in [
            ("aut_a", "alice", 100, 1),
            ("aut_b", "alice", 100, 1),
            ("aut_c", "alice", 101, 1),
            ("aut_d", "alice", 101, 0),
            ("aut_e", "bob", 100, 1),
        ] {
            sqlx::query(
                "INSERT INTO authentications (id, application_id, user_id, enrollment_id, kind, \
                 signed_request, parameters_digest, nonce, require_user_verification, state, \
                 created_at, expires_at, push_counted) \
                 VALUES ($1, 'app_1', $2, 'enr_1', 'approval', '', '', '', 0, 'pending', $3, \
                 1000, $4)",
            )
            .bind(id)
            .bind(user)
            .bind(created_at)
            .bind(counted)
            .execute(&pool)
            .await
            .expect("request");
        }

        SQLITE_MIGRATIONS.run(&pool).await.expect("migration 0045");

        let tallies: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT user_id, created_at, pushes FROM push_tallies ORDER BY user_id, created_at",
        )
        .fetch_all(&pool)
        .await
        .expect("tallies");
        assert_eq!(
            tallies,
            [
                ("alice".to_string(), 100, 2),
                ("alice".to_string(), 101, 1),
                ("bob".to_string(), 100, 1)
            ]
        );
    }

    /// Every column of every audit record, in `seq` order.
    async fn audit_rows(pool: &SqlitePool) -> Vec<Vec<Option<String>>> {
        let columns = "seq, id, at_ms, kind, actor, application_id, user_id, device_id, subject, \
                       client_ip, accessing_ip, location, outcome, details";
        let rows = sqlx::query(&format!(
            "SELECT {} FROM audit_log ORDER BY seq",
            columns
                .split(", ")
                .map(|c| format!("CAST({c} AS TEXT)"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .fetch_all(pool)
        .await
        .expect("audit rows");
        rows.iter()
            .map(|row| {
                (0..14)
                    .map(|i| sqlx::Row::get::<Option<String>, _>(row, i))
                    .collect()
            })
            .collect()
    }

    async fn append_audit(pool: &SqlitePool, id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "INSERT INTO audit_log (id, at_ms, kind, actor, application_id, user_id, outcome, \
             details) VALUES ($1, 5, 'request.created', 'api', 'app_1', 'alice', 'ok', '{}') \
             RETURNING seq",
        )
        .bind(id)
        .fetch_one(pool)
        .await
    }

    /// Migration 0046 rebuilds the audit log without AUTOINCREMENT: every record keeps its
    /// columns and its seq, a new record is numbered after the highest, and the log stays
    /// append-only.
    #[tokio::test]
    async fn the_audit_log_keeps_its_records_and_their_numbers_without_autoincrement() {
        let (_dir, pool) = migrated_before(46).await;
        for id in ["aud_a", "aud_b", "aud_c"] {
            append_audit(&pool, id).await.expect("record");
        }
        // A record with every optional column, numbered far ahead, and one refused (the id is
        // taken) whose number is not kept.
        sqlx::query(
            "INSERT INTO audit_log (seq, id, at_ms, kind, actor, application_id, user_id, \
             device_id, subject, client_ip, accessing_ip, location, outcome, details) VALUES \
             (40, 'aud_d', 7, 'device.removed', 'device', 'app_1', 'bob', 'enr_1', 'aut_1', \
             '10.0.0.1', '10.0.0.2', 'Paris', 'ok', '{\"n\":1}')",
        )
        .execute(&pool)
        .await
        .expect("record");
        assert!(
            append_audit(&pool, "aud_a").await.is_err(),
            "ids are unique"
        );
        let before = audit_rows(&pool).await;
        let seqs: Vec<Option<String>> = before.iter().map(|r| r[0].clone()).collect();
        assert_eq!(seqs, ["1", "2", "3", "40"].map(|s| Some(s.to_string())));

        SQLITE_MIGRATIONS.run(&pool).await.expect("migration 0046");

        assert_eq!(
            audit_rows(&pool).await,
            before,
            "every record, with its seq"
        );
        let table: String = sqlx::query_scalar(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'audit_log'",
        )
        .fetch_one(&pool)
        .await
        .expect("schema");
        assert!(!table.contains("AUTOINCREMENT"), "{table}");
        let sequences: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_sequence WHERE name = 'audit_log'")
                .fetch_one(&pool)
                .await
                .expect("sqlite_sequence");
        assert_eq!(sequences, 0);
        let mut objects: Vec<(String, String)> = sqlx::query_as(
            "SELECT type, name FROM sqlite_schema WHERE tbl_name = 'audit_log' ORDER BY type, name",
        )
        .fetch_all(&pool)
        .await
        .expect("schema");
        objects.sort();
        assert_eq!(
            objects,
            [
                ("index", "audit_log_by_application"),
                ("index", "audit_log_by_user"),
                ("index", "sqlite_autoindex_audit_log_1"),
                ("table", "audit_log"),
                ("trigger", "audit_log_no_delete"),
                ("trigger", "audit_log_no_update"),
            ]
            .map(|(t, n)| (t.to_string(), n.to_string()))
        );

        // New records are numbered after the highest, as before.
        assert_eq!(append_audit(&pool, "aud_e").await.expect("record"), 41);
        assert!(
            append_audit(&pool, "aud_e").await.is_err(),
            "ids are unique"
        );
        assert_eq!(append_audit(&pool, "aud_f").await.expect("record"), 42);

        // Still append-only.
        for change in [
            "UPDATE audit_log SET outcome = 'changed' WHERE id = 'aud_a'",
            "DELETE FROM audit_log WHERE id = 'aud_f'",
            "DELETE FROM audit_log",
        ] {
            let refused = sqlx::query(change)
                .execute(&pool)
                .await
                .expect_err("refused");
            assert!(
                refused.to_string().contains("audit_log is append-only"),
                "{change}: {refused}"
            );
        }
        assert_eq!(audit_rows(&pool).await.len(), 6);
        assert_eq!(append_audit(&pool, "aud_g").await.expect("record"), 43);
    }

    #[tokio::test]
    async fn the_key_ordered_tables_keep_their_rows_and_their_triggers() {
        let (_dir, pool) = migrated_before(33).await;
        insert_application(&pool).await;
        insert_pending(&pool, "aut_a", 1_000).await;
        insert_pending(&pool, "aut_b", 1_000).await;
        sqlx::query("INSERT INTO device_nonces (nonce_key, expires_at) VALUES ('n1', 500)")
            .execute(&pool)
            .await
            .expect("nonce");
        let before = pending_rows(&pool).await;
        assert_eq!(before.iter().map(|r| r.3).sum::<i64>(), 2);

        SQLITE_MIGRATIONS.run(&pool).await.expect("migration 0033");

        assert_eq!(pending_rows(&pool).await, before, "the counts are kept");
        let nonces: Vec<(String, i64)> =
            sqlx::query_as("SELECT nonce_key, expires_at FROM device_nonces")
                .fetch_all(&pool)
                .await
                .expect("nonces");
        assert_eq!(nonces, [("n1".to_string(), 500)]);
        for table in ["pending_expiries", "device_nonces"] {
            let sql: String = sqlx::query_scalar(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = $1",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .expect("schema");
            assert!(sql.contains("WITHOUT ROWID"), "{sql}");
        }
        let expiry_index: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'device_nonces_by_expiry'",
        )
        .fetch_one(&pool)
        .await
        .expect("index");
        assert_eq!(expiry_index, 1);
        assert!(
            sqlx::query("INSERT INTO device_nonces (nonce_key, expires_at) VALUES ('n1', 900)")
                .execute(&pool)
                .await
                .is_err(),
            "a nonce is still recorded once"
        );

        // The triggers still count: a new request adds, an answer and a deletion take away,
        // and the row goes with its last request.
        insert_pending(&pool, "aut_c", 2_000).await;
        assert_eq!(
            pending_rows(&pool).await.iter().map(|r| r.3).sum::<i64>(),
            3
        );
        sqlx::query("UPDATE authentications SET state = 'approved' WHERE id = 'aut_c'")
            .execute(&pool)
            .await
            .expect("answer");
        sqlx::query("DELETE FROM authentications WHERE id IN ('aut_a', 'aut_b')")
            .execute(&pool)
            .await
            .expect("delete");
        assert_eq!(pending_rows(&pool).await, []);
    }
}
