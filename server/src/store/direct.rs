//! SQLite statements run on the calling thread.
//!
//! sqlx runs each SQLite connection on a worker thread of its own and hands every statement to
//! it and the results back: two thread switches per statement, each a futex wake and, on a
//! server that is not saturated, a sleeping thread woken up. A profile of sequential approval
//! cycles put about a third of the server's CPU in those hand-offs (docs/benchmarks.md).
//! SQLite is a library: a read of a few indexed rows from its page cache takes microseconds,
//! less than the hand-off around it. So reads on SQLite run here, on the task's own thread,
//! on connections this module keeps ([`DirectSqlite`]), and their results come back in the
//! `Any` driver's types, so the storage functions that take any executor run unchanged
//! ([`super::Statements`]).
//!
//! What this keeps from sqlx's SQLite driver, so that a row reads the same either way: `$N`
//! placeholders bind the N-th value wherever they stand; an integer value is `BigInt`, a real
//! `Double`, text `Text` (refused if not UTF-8), a blob `Blob`; the rows come first and the
//! statement's result (rows changed, 0 for a statement that only reads) last; an error carries
//! SQLite's extended result code as its code, so outages and unique violations are told apart
//! as before (`store::error`). The connections are set up as the pool's (`busy_timeout`,
//! `foreign_keys`, `synchronous`, `temp_store`).
//!
//! This is written by hand because neither sqlx (its SQLite connection is its worker thread)
//! nor rusqlite (no `Any` rows) offers it; rusqlite does the FFI and the statement cache.

use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};
use sqlx::any::{AnyQueryResult, AnyRow, AnyTypeInfo, AnyTypeInfoKind, AnyValue};
use sqlx::{Any, Either, Execute};
use sqlx_core::any::{AnyColumn, AnyValueKind};
use sqlx_core::ext::ustr::UStr;
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A statement's result item: a row, or (last) what it changed.
pub(crate) type Item = Either<AnyQueryResult, AnyRow>;

/// The stream an executor returns for `query` run by `run` (on the calling thread, once
/// polled): its rows, then what it changed.
pub(super) fn stream_with<'e, 'q: 'e, E, F, Fut>(
    mut query: E,
    run: F,
) -> BoxStream<'e, Result<Item, sqlx::Error>>
where
    E: 'q + Execute<'q, Any>,
    F: FnOnce(&'q str, Vec<AnyValueKind<'static>>) -> Fut + Send + 'e,
    Fut: Future<Output = Result<Vec<Item>, sqlx::Error>> + Send + 'e,
{
    let values = owned_values(&mut query);
    let sql = query.sql();
    Box::pin(
        futures_util::stream::once(async move {
            let items = run(sql, values?).await?;
            Ok::<_, sqlx::Error>(futures_util::stream::iter(items.into_iter().map(Ok)))
        })
        .try_flatten(),
    )
}

/// The first row of `query` run by `run`, as an executor's `fetch_optional` returns it.
pub(super) fn first_row_with<'e, 'q: 'e, E, F, Fut>(
    mut query: E,
    run: F,
) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
where
    E: 'q + Execute<'q, Any>,
    F: FnOnce(&'q str, Vec<AnyValueKind<'static>>) -> Fut + Send + 'e,
    Fut: Future<Output = Result<Vec<Item>, sqlx::Error>> + Send + 'e,
{
    let values = owned_values(&mut query);
    let sql = query.sql();
    Box::pin(async move {
        let items = run(sql, values?).await?;
        Ok(items.into_iter().find_map(|item| match item {
            Either::Right(row) => Some(row),
            Either::Left(_) => None,
        }))
    })
}

/// What an executor answers when asked to prepare or describe a statement on a direct
/// connection (nothing on a request path does).
pub(super) fn not_on_direct<'e, T: Send + 'e>(
    what: &'static str,
) -> BoxFuture<'e, Result<T, sqlx::Error>> {
    Box::pin(async move {
        Err(sqlx::Error::Protocol(format!(
            "statements are not {what} on a direct SQLite connection"
        )))
    })
}

/// Takes `query`'s bound values, owned.
fn owned_values<'q>(
    query: &mut impl Execute<'q, Any>,
) -> Result<Vec<AnyValueKind<'static>>, sqlx::Error> {
    let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
    arguments
        .map(|a| a.values.0.into_iter().map(owned_value).collect())
        .unwrap_or(Ok(Vec::new()))
}

fn owned_value(value: AnyValueKind<'_>) -> Result<AnyValueKind<'static>, sqlx::Error> {
    Ok(match value {
        AnyValueKind::Null(kind) => AnyValueKind::Null(kind),
        AnyValueKind::Bool(v) => AnyValueKind::Bool(v),
        AnyValueKind::SmallInt(v) => AnyValueKind::SmallInt(v),
        AnyValueKind::Integer(v) => AnyValueKind::Integer(v),
        AnyValueKind::BigInt(v) => AnyValueKind::BigInt(v),
        AnyValueKind::Real(v) => AnyValueKind::Real(v),
        AnyValueKind::Double(v) => AnyValueKind::Double(v),
        AnyValueKind::Text(v) => AnyValueKind::Text(Cow::Owned(v.into_owned())),
        AnyValueKind::Blob(v) => AnyValueKind::Blob(Cow::Owned(v.into_owned())),
        _ => {
            return Err(sqlx::Error::Protocol(
                "a value of a kind this version does not know".into(),
            ));
        }
    })
}

/// How many prepared statements each connection keeps.
const STATEMENT_CACHE: usize = 256;

/// Connections to one SQLite database file, used on the calling thread.
///
/// A statement takes an idle connection (or opens one), runs, and gives it back: there are never
/// more connections than threads running statements at once.
pub(crate) struct DirectSqlite {
    path: PathBuf,
    /// The connections' `synchronous` (`store::durability`).
    synchronous: &'static str,
    idle: Mutex<Vec<DirectConnection>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for DirectSqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectSqlite").finish_non_exhaustive()
    }
}

/// One connection and what it learnt of its statements' columns.
pub(crate) struct DirectConnection {
    conn: Connection,
    columns: HashMap<Box<str>, Arc<Columns>>,
}

/// A statement's columns, shared by all rows it returns.
struct Columns {
    names: Arc<sqlx_core::HashMap<UStr, usize>>,
    columns: Vec<AnyColumn>,
}

impl DirectSqlite {
    /// Connections to the database file at `path` (which must exist: the pool created it),
    /// with `synchronous` set as given.
    pub(crate) fn open(path: &Path, synchronous: &'static str) -> Result<Self, sqlx::Error> {
        let direct = Self {
            path: path.to_path_buf(),
            synchronous,
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        };
        // Fail at start-up, not at the first request, if the file cannot be opened.
        let first = direct.connect()?;
        direct.give_back(first);
        Ok(direct)
    }

    fn connect(&self) -> Result<DirectConnection, sqlx::Error> {
        DirectConnection::open(&self.path, self.synchronous)
    }

    /// An idle connection, or a new one.
    pub(crate) fn take(&self) -> Result<DirectConnection, sqlx::Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(sqlx::Error::PoolClosed);
        }
        let idle = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        match idle {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    /// Gives `conn` back for the next statement (closed if the database was).
    pub(crate) fn give_back(&self, conn: DirectConnection) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// Runs `sql` with `values` on an idle connection, which it leaves outside any transaction
    /// ([`DirectConnection::run_alone`]): a connection given back inside one would pin an old
    /// snapshot for every later statement on it.
    pub(crate) fn run(
        &self,
        sql: &str,
        values: &[AnyValueKind<'_>],
    ) -> Result<Vec<Item>, sqlx::Error> {
        let mut conn = self.take()?;
        let result = conn.run_alone(sql, values);
        self.give_back(conn);
        result
    }

    /// Closes the idle connections; statements after this fail as on a closed pool.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

impl DirectConnection {
    /// A connection to the database file at `path`, set up as the pool's, with `synchronous`
    /// (`NORMAL` or `FULL`: `store::durability`).
    pub(super) fn open(path: &Path, synchronous: &'static str) -> Result<Self, sqlx::Error> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(failure)?;
        conn.execute_batch(&format!(
            "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
             PRAGMA synchronous = {synchronous}; PRAGMA temp_store = MEMORY;"
        ))
        .map_err(failure)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(DirectConnection {
            conn,
            columns: HashMap::new(),
        })
    }

    /// Whether the connection is outside any transaction.
    pub(super) fn is_autocommit(&self) -> bool {
        self.conn.is_autocommit()
    }

    /// Sets the connection's `wal_autocheckpoint` (log pages after which a commit checkpoints).
    pub(super) fn set_autocheckpoint(&self, pages: u32) -> Result<(), sqlx::Error> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", pages)
            .map_err(failure)
    }

    /// Runs one statement and returns its rows, then what it changed.
    pub(crate) fn run(
        &mut self,
        sql: &str,
        values: &[AnyValueKind<'_>],
    ) -> Result<Vec<Item>, sqlx::Error> {
        let mut statement = self.conn.prepare_cached(sql).map_err(failure)?;
        for index in 1..=statement.parameter_count() {
            let position = match statement.parameter_name(index) {
                None => index,
                Some(name) => placeholder_number(name).ok_or_else(|| {
                    sqlx::Error::Protocol(format!("unsupported placeholder {name}"))
                })?,
            };
            let value = position
                .checked_sub(1)
                .and_then(|i| values.get(i))
                .ok_or_else(|| {
                    sqlx::Error::Protocol(format!(
                        "placeholder {position} has no value ({} bound)",
                        values.len()
                    ))
                })?;
            statement
                .raw_bind_parameter(index, ToSqlOutput::Borrowed(to_sql(value)))
                .map_err(failure)?;
        }
        let columns = match self.columns.get(sql) {
            Some(columns) => columns.clone(),
            None => {
                let columns = Arc::new(columns_of(&statement));
                // Statements built at run time (a list's placeholders) come in many texts:
                // start over rather than keep them all.
                if self.columns.len() >= STATEMENT_CACHE {
                    self.columns.clear();
                }
                self.columns.insert(sql.into(), columns.clone());
                columns
            }
        };
        let readonly = statement.readonly();
        let mut items = Vec::new();
        let mut rows = statement.raw_query();
        while let Some(row) = rows.next().map_err(failure)? {
            let mut values = Vec::with_capacity(columns.columns.len());
            for index in 0..columns.columns.len() {
                let value = row.get_ref(index).map_err(failure)?;
                values.push(AnyValue {
                    kind: from_sql(value, index)?,
                });
            }
            items.push(Either::Right(AnyRow {
                column_names: columns.names.clone(),
                columns: columns.columns.clone(),
                values,
            }));
        }
        drop(rows);
        let rows_affected = if readonly { 0 } else { self.conn.changes() };
        items.push(Either::Left(AnyQueryResult {
            rows_affected,
            last_insert_id: None,
        }));
        Ok(items)
    }

    /// [`DirectConnection::run`] for a statement that must leave no transaction open (any single
    /// statement outside a writer's own transaction): one that began one is rolled back and
    /// refused, so the connection's next statement starts clean.
    pub(crate) fn run_alone(
        &mut self,
        sql: &str,
        values: &[AnyValueKind<'_>],
    ) -> Result<Vec<Item>, sqlx::Error> {
        let items = self.run(sql, values)?;
        if self.conn.is_autocommit() {
            return Ok(items);
        }
        self.conn.execute_batch("ROLLBACK").map_err(failure)?;
        Err(sqlx::Error::Protocol(
            "a transaction begins with Database::write, not in a single statement".into(),
        ))
    }
}

fn columns_of(statement: &rusqlite::Statement<'_>) -> Columns {
    let mut names = sqlx_core::HashMap::new();
    let mut columns = Vec::new();
    for (ordinal, name) in statement.column_names().into_iter().enumerate() {
        let name = UStr::from(name.to_string());
        names.insert(name.clone(), ordinal);
        columns.push(AnyColumn {
            ordinal,
            name,
            type_info: AnyTypeInfo {
                kind: AnyTypeInfoKind::Null,
            },
        });
    }
    Columns {
        names: Arc::new(names),
        columns,
    }
}

/// The number of a `$N` or `?N` placeholder.
fn placeholder_number(name: &str) -> Option<usize> {
    let digits = name.strip_prefix('$').or_else(|| name.strip_prefix('?'))?;
    digits.parse().ok().filter(|n| *n > 0)
}

fn to_sql<'a>(value: &'a AnyValueKind<'_>) -> ValueRef<'a> {
    match value {
        AnyValueKind::Bool(b) => ValueRef::Integer(i64::from(*b)),
        AnyValueKind::SmallInt(i) => ValueRef::Integer(i64::from(*i)),
        AnyValueKind::Integer(i) => ValueRef::Integer(i64::from(*i)),
        AnyValueKind::BigInt(i) => ValueRef::Integer(*i),
        AnyValueKind::Real(r) => ValueRef::Real(f64::from(*r)),
        AnyValueKind::Double(d) => ValueRef::Real(*d),
        AnyValueKind::Text(t) => ValueRef::Text(t.as_bytes()),
        AnyValueKind::Blob(b) => ValueRef::Blob(b),
        // `Null` and any kind a later sqlx adds.
        _ => ValueRef::Null,
    }
}

fn from_sql(value: ValueRef<'_>, index: usize) -> Result<AnyValueKind<'static>, sqlx::Error> {
    Ok(match value {
        ValueRef::Null => AnyValueKind::Null(AnyTypeInfoKind::Null),
        ValueRef::Integer(i) => AnyValueKind::BigInt(i),
        ValueRef::Real(r) => AnyValueKind::Double(r),
        ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => AnyValueKind::Text(Cow::Owned(text.to_string())),
            Err(e) => {
                return Err(sqlx::Error::ColumnDecode {
                    index: index.to_string(),
                    source: Box::new(e),
                });
            }
        },
        ValueRef::Blob(bytes) => AnyValueKind::Blob(Cow::Owned(bytes.to_vec())),
    })
}

/// A SQLite error as sqlx's, with the extended result code as its code.
fn failure(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            sqlx::Error::Database(Box::new(SqliteFailure {
                code: code.extended_code,
                message: message.unwrap_or_else(|| code.to_string()),
            }))
        }
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// SQLite's error, as [`sqlx::error::DatabaseError`].
#[derive(Debug)]
struct SqliteFailure {
    code: std::ffi::c_int,
    message: String,
}

impl std::fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for SqliteFailure {}

impl sqlx::error::DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use rusqlite::ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                sqlx::error::ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => sqlx::error::ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => sqlx::error::ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => sqlx::error::ErrorKind::CheckViolation,
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled SQLite is compiled as the workspace's `.cargo/config.toml` asks: a page
    /// cache per connection without the global lock of a shared one, and no memory statistics
    /// (another global lock, on every allocation). A build without those settings still works;
    /// this fails so that it is not shipped unnoticed.
    #[test]
    fn the_linked_sqlite_takes_no_global_lock_for_pages_or_allocations() {
        let conn = Connection::open_in_memory().expect("open");
        let mut statement = conn.prepare("PRAGMA compile_options").expect("prepare");
        let options: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    fn database() -> (tempfile::TempDir, DirectSqlite) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("direct.db");
        let conn = Connection::open(&path).expect("create");
        conn.execute_batch(
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, r REAL, b BLOB, maybe TEXT)",
        )
        .expect("table");
        drop(conn);
        let direct = DirectSqlite::open(&path, "NORMAL").expect("open");
        (dir, direct)
    }

    fn rows(items: Vec<Item>) -> (Vec<AnyRow>, u64) {
        let mut rows = Vec::new();
        let mut changed = None;
        for item in items {
            match item {
                Either::Right(row) => {
                    assert!(changed.is_none(), "rows come before the result");
                    rows.push(row);
                }
                Either::Left(done) => changed = Some(done.rows_affected),
            }
        }
        (rows, changed.expect("a result comes last"))
    }

    #[test]
    fn placeholders_bind_by_number_and_values_read_back_as_the_any_driver_gives_them() {
        use sqlx::Row;
        let (_dir, direct) = database();
        let insert = "INSERT INTO t (id, n, r, b, maybe) VALUES ($2, $1, $3, $4, $5)";
        let values = [
            AnyValueKind::Integer(7),
            AnyValueKind::Text("a".into()),
            AnyValueKind::Double(1.5),
            AnyValueKind::Blob(vec![0u8, 1, 2].into()),
            AnyValueKind::Null(AnyTypeInfoKind::Text),
        ];
        let (_, changed) = rows(direct.run(insert, &values).expect("insert"));
        assert_eq!(changed, 1);
        let (found, changed) = rows(
            direct
                .run(
                    "SELECT id, n, r, b, maybe, n = $1 AS same FROM t WHERE id = $1 OR n = $2",
                    &[AnyValueKind::Text("zzz".into()), AnyValueKind::BigInt(7)],
                )
                .expect("select"),
        );
        assert_eq!(changed, 0, "a read changes nothing");
        let row = found.first().expect("one row");
        assert_eq!(row.get::<String, _>("id"), "a");
        assert_eq!(row.get::<i64, _>("n"), 7);
        assert_eq!(row.get::<i32, _>(1), 7);
        assert_eq!(row.get::<f64, _>("r"), 1.5);
        assert_eq!(row.get::<Vec<u8>, _>("b"), vec![0u8, 1, 2]);
        assert_eq!(row.get::<Option<String>, _>("maybe"), None);
        assert!(matches!(row.values[1].kind, AnyValueKind::BigInt(7)));
    }

    #[test]
    fn unique_violations_and_bad_statements_are_typed_errors() {
        let (_dir, direct) = database();
        let insert = "INSERT INTO t (id) VALUES ($1)";
        let id = [AnyValueKind::Text("x".into())];
        assert!(direct.run(insert, &id).is_ok(), "first");
        let Err(again) = direct.run(insert, &id) else {
            panic!("a second row with the same id")
        };
        assert!(super::super::is_unique_violation(&again), "{again}");
        let Err(missing) = direct.run(insert, &[]) else {
            panic!("no value for $1")
        };
        assert!(matches!(missing, sqlx::Error::Protocol(_)), "{missing}");
        let Err(syntax) = direct.run("SELEC 1", &[]) else {
            panic!("syntax")
        };
        assert!(matches!(syntax, sqlx::Error::Database(_)), "{syntax}");
    }

    #[test]
    fn text_that_is_not_utf8_is_refused_not_mangled() {
        let (_dir, direct) = database();
        direct
            .run(
                "INSERT INTO t (id, maybe) VALUES ('x', CAST(x'ff' AS TEXT))",
                &[],
            )
            .expect("insert");
        let Err(e) = direct.run("SELECT maybe FROM t", &[]) else {
            panic!("invalid UTF-8")
        };
        assert!(matches!(e, sqlx::Error::ColumnDecode { .. }), "{e}");
    }

    #[test]
    fn many_statement_texts_keep_what_each_connection_learns_bounded() {
        let (_dir, direct) = database();
        for i in 0..(STATEMENT_CACHE * 2 + 3) {
            let sql = format!("SELECT {i} AS n, id FROM t");
            direct.run(&sql, &[]).expect("select");
        }
        let idle = direct.idle.lock().expect("idle");
        let conn = idle.first().expect("a connection");
        assert!(
            conn.columns.len() <= STATEMENT_CACHE,
            "{}",
            conn.columns.len()
        );
        assert!(!conn.columns.is_empty());
    }

    #[test]
    fn connections_are_set_up_as_the_pool_s() {
        let (_dir, direct) = database();
        for (pragma, expected) in [
            ("foreign_keys", 1),
            ("synchronous", 1), // NORMAL
            ("temp_store", 2),  // MEMORY: no temporary files
            ("busy_timeout", 10_000),
        ] {
            let (found, _) = rows(direct.run(&format!("PRAGMA {pragma}"), &[]).expect(pragma));
            let value: i64 = sqlx::Row::get(&found[0], 0);
            assert_eq!(value, expected, "{pragma}");
        }
    }

    #[test]
    fn a_closed_database_refuses_statements() {
        let (_dir, direct) = database();
        direct.close();
        let Err(e) = direct.run("SELECT 1", &[]) else {
            panic!("closed")
        };
        assert!(matches!(e, sqlx::Error::PoolClosed));
    }
}
