//! Write transactions.
//!
//! On SQLite a [`Write`] holds the one writer connection (`DirectWriter`, `store/writer.rs`) for its
//! whole transaction and runs its statements on the task's own thread: `BEGIN IMMEDIATE` (or, in
//! a group left open for it, `SAVEPOINT`) goes with its first statement, so a write that turns
//! out to write nothing takes no write lock, and writers wait for their turn in the order they
//! came. Its commit may be shared with the writers queued behind it (group commit,
//! `store/writer.rs`): [`Write::commit`] returns once the `COMMIT` that holds it ran. On
//! PostgreSQL it is an ordinary transaction: on a connection of the requests' own
//! (`store/pg_connections.rs`), given back when the transaction ends, or on the connection a
//! request already holds ([`super::Database::write_on`]).
//!
//! [`Write::defer`] runs a statement whose result nobody needs but what it changed, read from
//! the [`Committed`] transaction: the storage functions that record an audit event or queue a
//! webhook use it, whatever else the transaction does.
//!
//! `&mut Write` and `&mut WriteConn` (what a `Write` dereferences to) are [`sqlx::Executor`]s,
//! so the storage functions that take any executor run inside it unchanged.

use futures_util::stream::BoxStream;
use sqlx::Describe;
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, Either, Execute, Executor};
use sqlx_core::any::AnyValueKind;

use super::StoreError;
use super::direct::{Item, first_row_with, not_on_direct, stream_with};
use super::pg_connections::HeldConnection;
use super::writer::WriterTurn;

/// A write transaction (see the module documentation).
pub struct Write<'c> {
    conn: WriteConn<'c>,
    /// The number of rows each deferred statement changed, by [`Ticket`].
    changes: Vec<Option<u64>>,
}

/// The connection inside a [`Write`], for storage functions that run several statements in it.
pub struct WriteConn<'c>(Inner<'c>);

enum Inner<'c> {
    Sqlite(SqliteWrite),
    /// A transaction begun on a PostgreSQL connection of the requests' own: rolled back if
    /// dropped open.
    Postgres(Held<'c>),
    /// Committed or rolled back.
    Finished,
}

/// The connection a PostgreSQL write runs on: its own, or the one its request holds
/// ([`super::Database::write_on`]). Either way its statements, `BEGIN`, `COMMIT` and a dropped
/// transaction's `ROLLBACK` go through [`HeldConnection`], which notes a failure that leaves
/// the connection unfit, so it is closed when given back.
enum Held<'c> {
    Own(HeldConnection),
    Borrowed(&'c mut HeldConnection),
}

impl Held<'_> {
    fn get(&mut self) -> &mut HeldConnection {
        match self {
            Held::Own(held) => held,
            Held::Borrowed(held) => held,
        }
    }
}

struct SqliteWrite {
    turn: WriterTurn,
    /// Whether the transaction began (`BEGIN IMMEDIATE`, or `SAVEPOINT` in a group).
    begun: bool,
    /// Whether it joined a group another transaction began (its statements inside
    /// `SAVEPOINT member`).
    joined: bool,
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
        self.conn.fmt(f)
    }
}

impl std::fmt::Debug for WriteConn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (engine, open) = match &self.0 {
            Inner::Sqlite(w) => ("sqlite", w.begun),
            Inner::Postgres(_) => ("postgres", true),
            Inner::Finished => ("finished", false),
        };
        f.debug_struct("Write")
            .field("engine", &engine)
            .field("open", &open)
            .finish()
    }
}

impl<'c> std::ops::Deref for Write<'c> {
    type Target = WriteConn<'c>;

    fn deref(&self) -> &WriteConn<'c> {
        &self.conn
    }
}

impl std::ops::DerefMut for Write<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl<'c> Write<'c> {
    /// A write transaction on SQLite's writer connection, in its `turn`.
    pub(crate) fn sqlite(turn: WriterTurn) -> Write<'static> {
        Write {
            conn: WriteConn(Inner::Sqlite(SqliteWrite {
                turn,
                begun: false,
                joined: false,
            })),
            changes: Vec::new(),
        }
    }

    /// A write transaction begun on `held` (PostgreSQL), which it gives back when it ends.
    pub(crate) async fn postgres_held(held: HeldConnection) -> Result<Write<'static>, StoreError> {
        Write::postgres_begun(Held::Own(held)).await
    }

    /// A write transaction begun on `held`, the connection a request holds (PostgreSQL); the
    /// connection stays the request's after the transaction ends.
    pub(crate) async fn postgres_on(held: &'c mut HeldConnection) -> Result<Write<'c>, StoreError> {
        Write::postgres_begun(Held::Borrowed(held)).await
    }

    async fn postgres_begun(mut held: Held<'c>) -> Result<Write<'c>, StoreError> {
        held.get().begin().await?;
        Ok(Write {
            conn: WriteConn(Inner::Postgres(held)),
            changes: Vec::new(),
        })
    }

    /// The engine the transaction runs on.
    pub fn engine(&self) -> super::Engine {
        match self.conn.0 {
            Inner::Postgres(_) => super::Engine::Postgres,
            Inner::Sqlite(_) | Inner::Finished => super::Engine::Sqlite,
        }
    }

    /// Runs `query` now; what it changed is read from the [`Committed`] transaction.
    pub async fn defer<'q>(
        &mut self,
        query: impl Execute<'q, Any> + 'q,
    ) -> Result<Ticket, StoreError> {
        let done = (&mut self.conn).execute(query).await?;
        self.changes.push(Some(done.rows_affected()));
        Ok(Ticket(self.changes.len() - 1))
    }

    /// The connection, for storage functions that take one.
    pub async fn conn(&mut self) -> Result<&mut WriteConn<'c>, StoreError> {
        Ok(&mut self.conn)
    }

    /// Commits.
    pub async fn commit(mut self) -> Result<Committed, StoreError> {
        match std::mem::replace(&mut self.conn.0, Inner::Finished) {
            Inner::Sqlite(w) => {
                // A write that sent nothing has nothing to commit.
                if w.begun {
                    w.turn.commit_member(w.joined).await?;
                }
            }
            Inner::Postgres(mut held) => held.get().end(true).await?,
            Inner::Finished => return Err(StoreError::Query(sqlx::Error::PoolClosed)),
        }
        Ok(Committed {
            changes: std::mem::take(&mut self.changes),
        })
    }

    /// Rolls back, as [`Self::rollback`], then returns once every write this one's statements
    /// could see is committed (on SQLite, the members of its group before it: see
    /// `store/writer.rs`; on PostgreSQL a statement sees only what is committed). For a write
    /// whose conditional statement found its row taken by another, before it reads that row
    /// from outside the transaction to answer.
    pub async fn rollback_after_others(self) -> Result<(), StoreError> {
        self.roll_back(true).await
    }

    /// Rolls back: nothing it ran stays.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.roll_back(false).await
    }

    /// [`Self::rollback`], and with `after_others` [`Self::rollback_after_others`].
    async fn roll_back(mut self, after_others: bool) -> Result<(), StoreError> {
        match std::mem::replace(&mut self.conn.0, Inner::Finished) {
            Inner::Sqlite(mut w) if w.begun => {
                if after_others {
                    w.turn.roll_back_member_after_group(w.joined).await?;
                } else {
                    w.turn.roll_back_member(w.joined)?;
                }
            }
            Inner::Sqlite(_) | Inner::Finished => {}
            Inner::Postgres(mut held) => held.get().end(false).await?,
        }
        Ok(())
    }
}

impl SqliteWrite {
    /// Runs `sql`, after `BEGIN IMMEDIATE` (or `SAVEPOINT member` in a group left open) if this
    /// is the transaction's first statement.
    fn run(&mut self, sql: &str, values: &[AnyValueKind<'_>]) -> Result<Vec<Item>, sqlx::Error> {
        if !self.begun {
            if self.turn.in_group() {
                self.turn.run_in_group("SAVEPOINT member", &[])?;
                self.joined = true;
            } else {
                self.turn.start_group()?;
            }
            self.begun = true;
        }
        self.turn.run_in_group(sql, values)
    }
}

impl Drop for WriteConn<'_> {
    fn drop(&mut self) {
        match &mut self.0 {
            // The SQLite writer is rolled back here, before the next writer's turn.
            Inner::Sqlite(w) if w.begun => {
                if let Err(e) = w.turn.roll_back_member(w.joined) {
                    tracing::debug!(error = %e, "rolling back a dropped write");
                }
            }
            // Its `ROLLBACK` is queued on the connection, which is flushed before reuse
            // (`store/pg_connections.rs`).
            Inner::Postgres(held) => held.get().roll_back_if_open(),
            _ => {}
        }
    }
}

fn finished() -> sqlx::Error {
    sqlx::Error::Protocol("the write transaction has ended".into())
}

impl<'c, 't> Executor<'c> for &'c mut WriteConn<'t> {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match &mut self.0 {
            Inner::Postgres(held) => held.get().fetch_many(query),
            Inner::Sqlite(w) => {
                stream_with(query, move |sql, values| async move { w.run(sql, &values) })
            }
            Inner::Finished => Box::pin(futures_util::stream::once(async { Err(finished()) })),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::future::BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match &mut self.0 {
            Inner::Postgres(held) => held.get().fetch_optional(query),
            Inner::Sqlite(w) => {
                first_row_with(query, move |sql, values| async move { w.run(sql, &values) })
            }
            Inner::Finished => Box::pin(async { Err(finished()) }),
        }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        match &mut self.0 {
            Inner::Postgres(held) => held.get().prepare_with(sql, parameters),
            _ => not_on_direct("prepared"),
        }
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_util::future::BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        match &mut self.0 {
            Inner::Postgres(held) => held.get().describe(sql),
            _ => not_on_direct("described"),
        }
    }
}

impl<'c, 't> Executor<'c> for &'c mut Write<'t> {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        (&mut self.conn).fetch_many(query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::future::BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        (&mut self.conn).fetch_optional(query)
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&mut self.conn).prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_util::future::BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&mut self.conn).describe(sql)
    }
}

#[cfg(test)]
mod tests {

    /// A table of its own in a fresh database.
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

    /// Whether another connection (one of its own, to the same file) can take SQLite's write
    /// lock right now.
    async fn write_lock_free(dir: &tempfile::TempDir) -> bool {
        let conn = rusqlite::Connection::open(dir.path().join("store.db")).expect("connection");
        let free = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
        if free {
            conn.execute_batch("ROLLBACK").expect("rollback");
        }
        free
    }

    fn insert(
        k: &'static str,
        v: i64,
    ) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments<'static>> {
        sqlx::query("INSERT INTO write_test (k, v) VALUES ($1, $2)")
            .bind(k)
            .bind(v)
    }

    #[tokio::test]
    async fn deferred_statements_report_their_changes_and_the_write_lock_waits_for_a_statement() {
        let (dir, db) = fixture().await;
        let mut w = db.write().await.expect("write");
        // Nothing was sent yet, not even `BEGIN IMMEDIATE`.
        assert!(write_lock_free(&dir).await);
        let a = w.defer(insert("a", 1)).await.expect("deferred");
        assert!(
            !write_lock_free(&dir).await,
            "the transaction holds the write lock"
        );
        let b = w.defer(insert("b", 2)).await.expect("deferred");
        let row = sqlx::query("SELECT SUM(v) AS total FROM write_test WHERE k <> $1")
            .bind("none")
            .fetch_one(&mut w)
            .await
            .expect("sum");
        assert_eq!(sqlx::Row::get::<i64, _>(&row, "total"), 3);
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
        assert!(write_lock_free(&dir).await);
    }

    #[tokio::test]
    async fn a_dropped_write_rolls_back_before_the_next_writer_s_turn() {
        let (_dir, db) = fixture().await;
        insert("taken", 0).execute(db.writer()).await.expect("row");
        {
            let mut w = db.write().await.expect("write");
            w.defer(insert("new", 1)).await.expect("deferred");
            let failed = insert("taken", 2).execute(&mut *w).await;
            assert!(failed.is_err_and(|e| crate::store::is_unique_violation(&e)));
            // Dropped here, its transaction open.
        }
        let mut w = db.write().await.expect("write");
        w.defer(insert("after", 3)).await.expect("deferred");
        w.commit().await.expect("commit");
        assert_eq!(rows(&db).await, [("after".into(), 3), ("taken".into(), 0)]);
    }

    #[tokio::test]
    async fn a_single_statement_never_leaves_a_transaction_open() {
        let (dir, db) = fixture().await;
        for executor in [db.writer(), db.pool()] {
            let begun = sqlx::query("BEGIN IMMEDIATE").execute(executor).await;
            assert!(matches!(begun, Err(sqlx::Error::Protocol(_))), "{begun:?}");
            assert!(write_lock_free(&dir).await);
        }
        // Nor on a reader connection, the writer being busy.
        let held = db.write().await.expect("write");
        let begun = sqlx::query("BEGIN").execute(db.pool()).await;
        assert!(matches!(begun, Err(sqlx::Error::Protocol(_))), "{begun:?}");
        drop(held);
        insert("after", 1)
            .execute(db.writer())
            .await
            .expect("insert");
        assert_eq!(rows(&db).await, [("after".into(), 1)]);
    }

    #[tokio::test]
    async fn rollback_discards_and_an_empty_write_commits_without_a_statement() {
        let (dir, db) = fixture().await;
        let mut w = db.write().await.expect("write");
        insert("z", 1).execute(&mut w).await.expect("insert");
        w.rollback().await.expect("rollback");
        assert!(rows(&db).await.is_empty());
        assert!(write_lock_free(&dir).await);
        let w = db.write().await.expect("write");
        w.commit().await.expect("empty commit");
    }

    #[tokio::test]
    async fn writers_take_turns_in_the_order_they_came() {
        let (_dir, db) = fixture().await;
        let first = db.write().await.expect("first writer");
        let mut waiting = Vec::new();
        for i in 0..8_i64 {
            let db = db.clone();
            waiting.push(tokio::spawn(async move {
                let mut w = db.write().await.expect("writer");
                sqlx::query(
                    "INSERT INTO write_test (k, v) VALUES ($1, (SELECT COUNT(*) FROM write_test))",
                )
                .bind(format!("w{i}"))
                .execute(&mut w)
                .await
                .expect("insert");
                w.commit().await.expect("commit");
            }));
            // Each writer is queued before the next one starts.
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(first);
        for writer in waiting {
            writer.await.expect("writer");
        }
        let order: Vec<i64> = rows(&db).await.into_iter().map(|(_, v)| v).collect();
        assert_eq!(order, (0..8).collect::<Vec<_>>(), "w0 wrote first, w7 last");
    }

    /// Lets the spawned tasks run until they wait again (the tests run on one thread).
    async fn let_others_run() {
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    /// A write that inserted `a`, with `second` spawned to queue behind it; returns the first
    /// write's commit, spawned once `second` is queued (so it leaves its transaction open for
    /// `second`), and `second`'s handle.
    async fn first_and_queued<T: Send + 'static>(
        db: &crate::store::Database,
        second: impl std::future::Future<Output = T> + Send + 'static,
    ) -> (
        tokio::task::JoinHandle<Result<super::Committed, super::StoreError>>,
        tokio::task::JoinHandle<T>,
    ) {
        let mut first = db.write().await.expect("first writer");
        insert("a", 1).execute(&mut first).await.expect("insert");
        let second = tokio::spawn(second);
        let_others_run().await;
        (tokio::spawn(first.commit()), second)
    }

    #[tokio::test]
    async fn writers_queued_at_a_commit_share_it_and_each_learns_it_only_then() {
        let (dir, db) = fixture().await;
        let (go, commit_second) = tokio::sync::oneshot::channel::<()>();
        let (first_commit, second) = first_and_queued(&db, {
            let db = db.clone();
            async move {
                let mut w = db.write().await.expect("second writer");
                insert("b", 2).execute(&mut w).await.expect("insert");
                let _ = commit_second.await;
                w.commit().await.map(drop)
            }
        })
        .await;
        let_others_run().await;
        assert!(!first_commit.is_finished(), "told before its COMMIT ran");
        assert!(rows(&db).await.is_empty(), "nothing committed yet");
        assert!(!write_lock_free(&dir).await, "the group holds the lock");
        let _ = go.send(());
        second.await.expect("second").expect("second commit");
        first_commit.await.expect("first").expect("first commit");
        assert_eq!(rows(&db).await, [("a".into(), 1), ("b".into(), 2)]);
        assert!(write_lock_free(&dir).await);
    }

    #[tokio::test]
    async fn a_member_that_fails_is_rolled_back_alone() {
        let (_dir, db) = fixture().await;
        insert("taken", 0).execute(db.writer()).await.expect("row");
        let (first_commit, second) = first_and_queued(&db, {
            let db = db.clone();
            async move {
                let mut w = db.write().await.expect("second writer");
                insert("b", 2).execute(&mut w).await.expect("insert");
                let failed = insert("taken", 3).execute(&mut w).await;
                assert!(failed.is_err_and(|e| crate::store::is_unique_violation(&e)));
                w.rollback().await.expect("rollback");
            }
        })
        .await;
        second.await.expect("second");
        first_commit.await.expect("first").expect("first commit");
        assert_eq!(rows(&db).await, [("a".into(), 1), ("taken".into(), 0)]);
    }

    #[tokio::test]
    async fn a_member_that_found_its_row_taken_reads_it_once_rolled_back_after_the_others() {
        let (_dir, db) = fixture().await;
        let (first_commit, second) = first_and_queued(&db, {
            let db = db.clone();
            async move {
                let mut w = db.write().await.expect("second writer");
                // The member before it took `a`: this one's conditional insert changes nothing.
                let taken = sqlx::query(
                    "INSERT INTO write_test (k, v) VALUES ('a', 2) ON CONFLICT (k) DO NOTHING",
                )
                .execute(&mut w)
                .await
                .expect("insert");
                assert_eq!(taken.rows_affected(), 0, "it sees the first member's row");
                // A third writer queues behind it: the group stays open for that one.
                let third = tokio::spawn({
                    let db = db.clone();
                    async move {
                        let mut w = db.write().await.expect("third writer");
                        insert("c", 3).execute(&mut w).await.expect("insert");
                        w.commit().await.expect("third commit");
                    }
                });
                let_others_run().await;
                w.rollback_after_others().await.expect("rollback");
                // What it read inside, a read outside now finds.
                let seen = rows(&db).await;
                third.await.expect("third");
                seen
            }
        })
        .await;
        let seen = second.await.expect("second");
        first_commit.await.expect("first").expect("first commit");
        assert!(seen.contains(&("a".into(), 1)), "{seen:?}");
        assert_eq!(rows(&db).await, [("a".into(), 1), ("c".into(), 3)]);
    }

    #[tokio::test]
    async fn a_group_the_queued_writer_left_is_committed_by_its_member() {
        let (dir, db) = fixture().await;
        let (first_commit, gives_up) = first_and_queued(&db, {
            let db = db.clone();
            async move {
                let _w = db.write().await;
                std::future::pending::<()>().await;
            }
        })
        .await;
        let_others_run().await;
        assert!(!first_commit.is_finished());
        // The writer it left the group open for gives up before its turn came.
        gives_up.abort();
        first_commit.await.expect("first").expect("first commit");
        assert_eq!(rows(&db).await, [("a".into(), 1)]);
        assert!(write_lock_free(&dir).await);
    }

    #[tokio::test]
    async fn a_single_statement_commits_the_open_group_before_it_runs() {
        let (_dir, db) = fixture().await;
        let (first_commit, single) = first_and_queued(&db, {
            let db = db.clone();
            async move { insert("s", 2).execute(db.writer()).await.map(drop) }
        })
        .await;
        single.await.expect("single").expect("single statement");
        first_commit.await.expect("first").expect("first commit");
        assert_eq!(rows(&db).await, [("a".into(), 1), ("s".into(), 2)]);
    }

    #[tokio::test]
    async fn when_the_group_s_commit_fails_every_member_is_told_and_nothing_stays() {
        let (dir, db) = fixture().await;
        // A constraint checked only at COMMIT: the second member's row breaks it.
        sqlx::query(
            "CREATE TABLE write_child (k TEXT REFERENCES write_test (k) DEFERRABLE INITIALLY DEFERRED)",
        )
        .execute(db.writer())
        .await
        .expect("table");
        let (first_commit, second) = first_and_queued(&db, {
            let db = db.clone();
            async move {
                let mut w = db.write().await.expect("second writer");
                sqlx::query("INSERT INTO write_child (k) VALUES ($1)")
                    .bind("nobody")
                    .execute(&mut w)
                    .await
                    .expect("insert, checked later");
                w.commit().await.map(drop)
            }
        })
        .await;
        let second = second.await.expect("second");
        let first = first_commit.await.expect("first");
        // The member that ran the COMMIT gets SQLite's error; the other one an outage to retry
        // (it did nothing wrong).
        assert!(second.is_err(), "{second:?}");
        let Err(e) = first else {
            panic!("a member was told its failed commit held")
        };
        assert!(e.is_unavailable(), "{e}");
        assert!(rows(&db).await.is_empty());
        assert!(write_lock_free(&dir).await);
        // The writer goes on.
        insert("after", 1)
            .execute(db.writer())
            .await
            .expect("insert");
        assert_eq!(rows(&db).await, [("after".into(), 1)]);
    }

    #[tokio::test]
    async fn a_write_whose_transaction_the_database_rolled_back_runs_nothing_more() {
        let (dir, db) = fixture().await;
        let (first_commit, second) = first_and_queued(&db, {
            let db = db.clone();
            async move {
                let mut w = db.write().await.expect("second writer");
                insert("b", 2).execute(&mut w).await.expect("insert");
                // As SQLite does by itself after an I/O or disk-full error.
                sqlx::query("ROLLBACK")
                    .execute(&mut w)
                    .await
                    .expect("rolled back");
                let refused = insert("c", 3).execute(&mut w).await;
                assert!(
                    refused.is_err(),
                    "outside the transaction it would commit alone"
                );
            }
        })
        .await;
        second.await.expect("second");
        let Err(e) = first_commit.await.expect("first") else {
            panic!("told its rolled-back commit held")
        };
        assert!(e.is_unavailable(), "{e}");
        assert!(rows(&db).await.is_empty());
        assert!(write_lock_free(&dir).await);
    }
}
