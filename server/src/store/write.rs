//! Write transactions whose statements travel together.
//!
//! On SQLite every statement is a hand-off to the connection's worker thread and back, and a
//! write transaction holds the one writer connection across all of them: under load each hand-off
//! also waits for the requesting task to be scheduled again, while every other writer queues.
//! A [`Write`] sends `BEGIN IMMEDIATE` with its first statement, lets statements whose result
//! nobody needs before the commit wait ([`Write::defer`]) and sends them with the next statement
//! or with the `COMMIT`: one hand-off carries several statements (SQLite runs a text of several
//! statements one after the other, binding `$N` by its number across the whole text, so each
//! statement's placeholders are renumbered after the values of those before it).
//!
//! A deferred statement's error surfaces at the next statement sent, or at the commit, and fails
//! the transaction there: defer only statements whose failure should fail the whole transaction.
//!
//! On PostgreSQL each statement is a network round trip either way and a prepared statement holds
//! one statement, so a [`Write`] is an ordinary transaction there: deferred statements run at once.
//!
//! `&mut Write` is a [`sqlx::Executor`], so the storage functions that take any executor run
//! inside it unchanged (with whatever is deferred sent ahead of them).

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::Describe;
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Either, Execute, Executor, Transaction};
use sqlx_core::any::AnyValueKind;
use std::borrow::Cow;

use super::StoreError;

/// A write transaction (see the module documentation).
pub struct Write<'c> {
    inner: Inner<'c>,
    /// The number of rows each deferred statement changed, by [`Ticket`], once it ran.
    changes: Vec<Option<u64>>,
}

enum Inner<'c> {
    Sqlite(SqliteWrite),
    Postgres(Transaction<'c, Any>),
}

/// Where a SQLite write transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing sent yet: `BEGIN IMMEDIATE` goes with the first statement.
    NotBegun,
    /// `BEGIN IMMEDIATE` ran.
    Open,
    /// A text holding `BEGIN IMMEDIATE` or `COMMIT` failed: the transaction may be open.
    Unknown,
    /// Committed or rolled back.
    Finished,
}

struct SqliteWrite {
    /// The writer connection (taken out only when a dropped transaction is rolled back).
    conn: Option<PoolConnection<Any>>,
    stage: Stage,
    pending: Vec<Pending>,
}

/// A statement waiting to be sent.
struct Pending {
    sql: String,
    values: Vec<AnyValueKind<'static>>,
    ticket: usize,
}

/// A deferred statement, to read what it changed once the transaction committed
/// ([`Committed::changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(usize);

/// What a committed [`Write`] changed.
#[derive(Debug)]
pub struct Committed {
    changes: Vec<Option<u64>>,
}

impl Committed {
    /// How many rows the deferred statement of `ticket` changed.
    pub fn changes(&self, ticket: Ticket) -> u64 {
        self.changes.get(ticket.0).copied().flatten().unwrap_or(0)
    }
}

impl std::fmt::Debug for Write<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Sqlite(w) => f
                .debug_struct("Write")
                .field("engine", &"sqlite")
                .field("stage", &w.stage)
                .field("pending", &w.pending.len())
                .finish(),
            Inner::Postgres(_) => f
                .debug_struct("Write")
                .field("engine", &"postgres")
                .finish(),
        }
    }
}

type Item = Either<AnyQueryResult, AnyRow>;

impl<'c> Write<'c> {
    /// A write transaction on SQLite's writer connection `conn`.
    pub(crate) fn sqlite(conn: PoolConnection<Any>) -> Write<'static> {
        Write {
            inner: Inner::Sqlite(SqliteWrite {
                conn: Some(conn),
                stage: Stage::NotBegun,
                pending: Vec::new(),
            }),
            changes: Vec::new(),
        }
    }

    /// A write transaction that is the PostgreSQL transaction `tx`.
    pub(crate) fn postgres(tx: Transaction<'c, Any>) -> Write<'c> {
        Write {
            inner: Inner::Postgres(tx),
            changes: Vec::new(),
        }
    }

    /// The engine the transaction runs on.
    pub fn engine(&self) -> super::Engine {
        match self.inner {
            Inner::Sqlite(_) => super::Engine::Sqlite,
            Inner::Postgres(_) => super::Engine::Postgres,
        }
    }

    /// Runs `query` when the next statement is sent, or at the commit (at once on PostgreSQL);
    /// its result is only what it changed, read from the [`Committed`] transaction.
    pub async fn defer<'q>(
        &mut self,
        mut query: impl Execute<'q, Any> + 'q,
    ) -> Result<Ticket, StoreError> {
        let ticket = self.changes.len();
        self.changes.push(None);
        match &mut self.inner {
            Inner::Sqlite(w) => {
                let values = owned_values(&mut query)?;
                w.pending.push(Pending {
                    sql: query.sql().to_string(),
                    values,
                    ticket,
                });
            }
            Inner::Postgres(tx) => {
                let done = (&mut **tx).execute(query).await?;
                self.changes[ticket] = Some(done.rows_affected());
            }
        }
        Ok(Ticket(ticket))
    }

    /// The connection, for storage functions that take one, with everything deferred sent first.
    pub async fn conn(&mut self) -> Result<&mut AnyConnection, StoreError> {
        match &mut self.inner {
            Inner::Sqlite(w) => {
                if w.stage == Stage::NotBegun || !w.pending.is_empty() {
                    w.run(&mut self.changes, None).await?;
                }
                w.connection().map_err(StoreError::from)
            }
            Inner::Postgres(tx) => Ok(&mut **tx),
        }
    }

    /// Commits, with whatever is still deferred sent in the same hand-off as the `COMMIT`.
    pub async fn commit(mut self) -> Result<Committed, StoreError> {
        match &mut self.inner {
            Inner::Sqlite(w) => {
                // A write that sent nothing and defers nothing has nothing to commit.
                if w.stage != Stage::NotBegun || !w.pending.is_empty() {
                    w.run(&mut self.changes, Some(("COMMIT", Vec::new())))
                        .await?;
                }
                w.stage = Stage::Finished;
            }
            Inner::Postgres(_) => {
                if let Some(tx) = self.take_postgres() {
                    tx.commit().await?;
                }
            }
        }
        Ok(Committed {
            changes: std::mem::take(&mut self.changes),
        })
    }

    /// Rolls back: nothing deferred runs, nothing sent stays.
    pub async fn rollback(mut self) -> Result<(), StoreError> {
        match &mut self.inner {
            Inner::Sqlite(w) => {
                w.pending.clear();
                if matches!(w.stage, Stage::Open | Stage::Unknown) {
                    let conn = w.connection()?;
                    let result = conn.execute("ROLLBACK").await;
                    // A transaction whose `BEGIN` never ran has nothing to roll back.
                    if w.stage == Stage::Open {
                        result?;
                    }
                }
                w.stage = Stage::Finished;
                Ok(())
            }
            Inner::Postgres(_) => {
                if let Some(tx) = self.take_postgres() {
                    tx.rollback().await?;
                }
                Ok(())
            }
        }
    }

    /// Takes the PostgreSQL transaction out (to commit or roll it back), leaving a finished
    /// write behind.
    fn take_postgres(&mut self) -> Option<Transaction<'c, Any>> {
        let finished = Inner::Sqlite(SqliteWrite {
            conn: None,
            stage: Stage::Finished,
            pending: Vec::new(),
        });
        match std::mem::replace(&mut self.inner, finished) {
            Inner::Postgres(tx) => Some(tx),
            Inner::Sqlite(_) => None,
        }
    }

    /// Runs `sql` with `values` (with what is deferred sent ahead of it) and returns its results.
    async fn run_statement(
        &mut self,
        sql: &str,
        values: Vec<AnyValueKind<'static>>,
    ) -> Result<Vec<Item>, sqlx::Error> {
        match &mut self.inner {
            Inner::Sqlite(w) => w.run(&mut self.changes, Some((sql, values))).await,
            Inner::Postgres(tx) => {
                (&mut **tx)
                    .fetch_many(sqlx::query_with(sql, arguments(values)))
                    .try_collect()
                    .await
            }
        }
    }
}

impl SqliteWrite {
    fn connection(&mut self) -> Result<&mut AnyConnection, sqlx::Error> {
        match self.conn.as_mut() {
            Some(conn) => Ok(&mut **conn),
            None => Err(sqlx::Error::PoolClosed),
        }
    }

    /// Sends `BEGIN IMMEDIATE` if not sent yet, the deferred statements and `last` in one text,
    /// notes what each deferred statement changed and returns `last`'s results.
    async fn run(
        &mut self,
        changes: &mut [Option<u64>],
        last: Option<(&str, Vec<AnyValueKind<'static>>)>,
    ) -> Result<Vec<Item>, sqlx::Error> {
        if self.stage == Stage::Finished {
            return Err(sqlx::Error::WorkerCrashed);
        }
        let begins = self.stage == Stage::NotBegun;
        let ends = matches!(&last, Some(("COMMIT", _)));
        let mut text = String::new();
        let mut values: Vec<AnyValueKind<'static>> = Vec::new();
        let mut tickets = Vec::with_capacity(self.pending.len() + 1);
        if begins {
            text.push_str("BEGIN IMMEDIATE");
            tickets.push(None);
        }
        for pending in self.pending.drain(..) {
            push_statement(&mut text, &pending.sql, values.len())?;
            values.extend(pending.values);
            tickets.push(Some(pending.ticket));
        }
        let has_last = last.is_some();
        if let Some((sql, last_values)) = last {
            push_statement(&mut text, sql, values.len())?;
            values.extend(last_values);
        }
        if text.is_empty() {
            return Ok(Vec::new());
        }
        if begins || ends {
            self.stage = Stage::Unknown;
        }
        let conn = self.connection()?;
        let mut stream = conn.fetch_many(sqlx::query_with(&text, arguments(values)));
        let mut ended = 0;
        let mut results = Vec::new();
        while let Some(item) = stream.next().await {
            let item = item?;
            if ended < tickets.len() {
                if let Either::Left(done) = &item {
                    if let Some(ticket) = tickets[ended] {
                        changes[ticket] = Some(done.rows_affected());
                    }
                    ended += 1;
                }
            } else if has_last {
                results.push(item);
            }
        }
        drop(stream);
        self.stage = if ends { Stage::Finished } else { Stage::Open };
        Ok(results)
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        let Inner::Sqlite(w) = &mut self.inner else {
            // sqlx rolls a dropped transaction back.
            return;
        };
        if !matches!(w.stage, Stage::Open | Stage::Unknown) {
            return;
        }
        let Some(mut conn) = w.conn.take() else {
            return;
        };
        // The connection goes back to the writer pool only once rolled back; without a runtime
        // to do that on, it is closed instead (SQLite rolls back a closing connection).
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    match conn.execute("ROLLBACK").await {
                        // Rolled back, or nothing was open (its `BEGIN` never ran, or its
                        // `COMMIT` did before the caller stopped waiting).
                        Ok(_) | Err(sqlx::Error::Database(_)) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "rolling back a dropped write");
                            drop(conn.detach());
                        }
                    }
                });
            }
            Err(_) => drop(conn.detach()),
        }
    }
}

/// Takes `query`'s bound values, owned.
pub(super) fn owned_values<'q>(
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

fn arguments(values: Vec<AnyValueKind<'static>>) -> AnyArguments<'static> {
    let mut arguments = AnyArguments::default();
    arguments.values.0 = values;
    arguments
}

/// Appends `sql` to `text` as its next statement, its `$N` placeholders moved up by `offset`
/// (the values bound by the statements before it). Quoted text, quoted names and comments are
/// copied as they are; an anonymous `?` placeholder cannot be renumbered and is refused. With
/// no value before it, the statement is copied as it is.
fn push_statement(text: &mut String, sql: &str, offset: usize) -> Result<(), sqlx::Error> {
    let sql = sql.trim_end().trim_end_matches(';').trim_end();
    if !text.is_empty() {
        text.push_str(";\n");
    }
    if offset == 0 {
        text.push_str(sql);
        return Ok(());
    }
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'?' => {
                return Err(sqlx::Error::Protocol(
                    "a deferred statement uses an anonymous `?` placeholder".into(),
                ));
            }
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                let number: usize = sql[start..end].parse().map_err(|_| {
                    sqlx::Error::Protocol("a placeholder number is too large".into())
                })?;
                text.push_str(&sql[copied..i]);
                text.push('$');
                text.push_str(&(number + offset).to_string());
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    text.push_str(&sql[copied.min(sql.len())..]);
    Ok(())
}

impl<'c, 't> Executor<'c> for &'c mut Write<'t> {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        mut query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let values = owned_values(&mut query);
        let sql = query.sql();
        Box::pin(
            futures_util::stream::once(async move {
                let items = self.run_statement(sql, values?).await?;
                Ok::<_, sqlx::Error>(futures_util::stream::iter(items.into_iter().map(Ok)))
            })
            .try_flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        mut query: E,
    ) -> futures_util::future::BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let values = owned_values(&mut query);
        let sql = query.sql();
        Box::pin(async move {
            let items = self.run_statement(sql, values?).await?;
            Ok(items.into_iter().find_map(|item| match item {
                Either::Right(row) => Some(row),
                Either::Left(_) => None,
            }))
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let conn = self.conn().await.map_err(into_sqlx)?;
            conn.prepare_with(sql, parameters).await
        })
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_util::future::BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let conn = self.conn().await.map_err(into_sqlx)?;
            conn.describe(sql).await
        })
    }
}

/// A storage error back as the driver's, for the [`Executor`] methods.
fn into_sqlx(e: StoreError) -> sqlx::Error {
    match e {
        StoreError::Unavailable(e) | StoreError::Query(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renumbered(statements: &[(&str, usize)]) -> String {
        let mut text = String::new();
        for (sql, offset) in statements {
            push_statement(&mut text, sql, *offset).expect("renumbered");
        }
        text
    }

    #[test]
    fn placeholders_move_up_by_the_values_before_them() {
        assert_eq!(
            renumbered(&[
                ("INSERT INTO t (a, b) VALUES ($1, $2);", 0),
                ("UPDATE t SET a = $1 WHERE b = $2 OR c = $1", 2),
                ("COMMIT", 4),
            ]),
            "INSERT INTO t (a, b) VALUES ($1, $2);\nUPDATE t SET a = $3 WHERE b = $4 OR c = $3;\nCOMMIT"
        );
        assert_eq!(
            renumbered(&[("SELECT $9, $10, $11", 95)]),
            "SELECT $104, $105, $106"
        );
    }

    #[test]
    fn quoted_text_names_and_comments_are_left_alone() {
        assert_eq!(
            renumbered(&[(
                "SELECT '$1 ?', \"$2\", $1 -- $3 ?\n, $2 /* $4 ? */ FROM t",
                10
            )]),
            "SELECT '$1 ?', \"$2\", $11 -- $3 ?\n, $12 /* $4 ? */ FROM t"
        );
    }

    #[test]
    fn anonymous_placeholders_are_refused() {
        let mut text = String::new();
        assert!(push_statement(&mut text, "SELECT ?", 1).is_err());
    }

    /// A table of its own in a fresh database, and a second connection to look from outside.
    async fn fixture() -> (tempfile::TempDir, crate::store::Database) {
        let (dir, db, _) = crate::store::test_db_with_app().await;
        sqlx::query("CREATE TABLE write_test (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")
            .execute(db.writer())
            .await
            .expect("table");
        (dir, db)
    }

    async fn rows(db: &crate::store::Database) -> Vec<(String, i64)> {
        sqlx::query_as("SELECT k, v FROM write_test ORDER BY k")
            .fetch_all(db.pool())
            .await
            .expect("rows")
    }

    /// Whether another connection can take SQLite's write lock right now.
    async fn write_lock_free(db: &crate::store::Database) -> bool {
        let mut conn = db.reader().await.expect("connection");
        conn.execute("PRAGMA busy_timeout = 0")
            .await
            .expect("pragma");
        let free = conn.execute("BEGIN IMMEDIATE").await.is_ok();
        if free {
            conn.execute("ROLLBACK").await.expect("rollback");
        }
        conn.execute("PRAGMA busy_timeout = 10000")
            .await
            .expect("pragma");
        free
    }

    #[tokio::test]
    async fn deferred_statements_go_with_the_next_one_and_report_their_changes() {
        let (_dir, db) = fixture().await;
        let mut w = db.write().await.expect("write");
        let a = w
            .defer(
                sqlx::query("INSERT INTO write_test (k, v) VALUES ($1, $2)")
                    .bind("a")
                    .bind(1_i64),
            )
            .await
            .expect("deferred");
        let b = w
            .defer(
                sqlx::query("INSERT INTO write_test (k, v) VALUES ($1, $2)")
                    .bind("b")
                    .bind(2_i64),
            )
            .await
            .expect("deferred");
        // Nothing was sent yet, not even `BEGIN IMMEDIATE`.
        assert!(write_lock_free(&db).await);
        // The next statement sees the deferred ones (they ran before it, in the transaction).
        let row = sqlx::query("SELECT SUM(v) AS total FROM write_test WHERE k <> $1")
            .bind("none")
            .fetch_one(&mut w)
            .await
            .expect("sum");
        assert_eq!(sqlx::Row::get::<i64, _>(&row, "total"), 3);
        assert!(
            !write_lock_free(&db).await,
            "the transaction holds the write lock"
        );
        let c = w
            .defer(
                sqlx::query("UPDATE write_test SET v = v + $1 WHERE v > $2")
                    .bind(10_i64)
                    .bind(0_i64),
            )
            .await
            .expect("deferred");
        let none = w
            .defer(sqlx::query("UPDATE write_test SET v = 0 WHERE k = $1").bind("nobody"))
            .await
            .expect("deferred");
        assert!(rows(&db).await.is_empty(), "nothing committed yet");
        let committed = w.commit().await.expect("commit");
        assert_eq!([a, b, c, none].map(|t| committed.changes(t)), [1, 1, 2, 0]);
        assert_eq!(rows(&db).await, [("a".into(), 11), ("b".into(), 12)]);
        assert!(write_lock_free(&db).await);
    }

    #[tokio::test]
    async fn a_failing_deferred_statement_fails_the_next_and_the_dropped_write_rolls_back() {
        let (_dir, db) = fixture().await;
        sqlx::query("INSERT INTO write_test (k, v) VALUES ('taken', 0)")
            .execute(db.writer())
            .await
            .expect("row");
        {
            let mut w = db.write().await.expect("write");
            w.defer(
                sqlx::query("INSERT INTO write_test (k, v) VALUES ($1, $2)")
                    .bind("new")
                    .bind(1_i64),
            )
            .await
            .expect("deferred");
            w.defer(
                sqlx::query("INSERT INTO write_test (k, v) VALUES ($1, $2)")
                    .bind("taken")
                    .bind(2_i64),
            )
            .await
            .expect("deferred");
            let failed = sqlx::query("UPDATE write_test SET v = 5 WHERE k = $1")
                .bind("taken")
                .execute(&mut w)
                .await;
            assert!(failed.is_err_and(|e| crate::store::is_unique_violation(&e)));
            // Dropped here, its transaction open.
        }
        // The writer comes back rolled back: the next write commits alone.
        let mut w = db.write().await.expect("write");
        w.defer(
            sqlx::query("INSERT INTO write_test (k, v) VALUES ($1, $2)")
                .bind("after")
                .bind(3_i64),
        )
        .await
        .expect("deferred");
        w.commit().await.expect("commit");
        assert_eq!(rows(&db).await, [("after".into(), 3), ("taken".into(), 0)]);
    }

    #[tokio::test]
    async fn a_failing_commit_batch_leaves_nothing_and_rollback_discards() {
        let (_dir, db) = fixture().await;
        let mut w = db.write().await.expect("write");
        w.defer(
            sqlx::query("INSERT INTO write_test (k, v) VALUES ($1, $2)")
                .bind("x")
                .bind(1_i64),
        )
        .await
        .expect("deferred");
        w.defer(sqlx::query("INSERT INTO write_test (k, v) VALUES ($1, NULL)").bind("y"))
            .await
            .expect("deferred");
        assert!(
            w.commit().await.is_err(),
            "the NOT NULL violation fails the commit"
        );
        let mut w = db.write().await.expect("write");
        sqlx::query("INSERT INTO write_test (k, v) VALUES ($1, $2)")
            .bind("z")
            .bind(1_i64)
            .execute(&mut w)
            .await
            .expect("insert");
        w.rollback().await.expect("rollback");
        assert!(rows(&db).await.is_empty());
        assert!(write_lock_free(&db).await);
        // A write that wrote nothing commits without a statement.
        let w = db.write().await.expect("write");
        w.commit().await.expect("empty commit");
    }
}
