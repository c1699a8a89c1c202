//! The one SQLite writer connection: turns in the order writers came, and group commit.
//!
//! SQLite has one writer at a time. Here it is one connection ([`DirectWriter`]); a writer holds
//! it for its whole transaction ([`super::Write`]) or for one statement ([`super::Statements`])
//! and runs its statements on its own thread, while the others wait in `tokio`'s fair queue,
//! asleep, without SQLite's `busy_timeout` sleeps.
//!
//! **Group commit.** A commit in WAL mode appends every page the transaction changed to the log.
//! A request that creates an authentication changes about twenty pages, and about half of them
//! are the same for every request: the tail pages of the tables and of the indexes ordered by
//! time, the application's pending count. When a write transaction ends while other writers wait
//! for their turn, its `COMMIT` is not sent: the transaction stays open, and the next writer runs
//! inside it, between `SAVEPOINT` and `RELEASE`, so that its rows and its rollback stay its own.
//! The last writer of the group (no other writer waiting, or [`MAX_GROUP`] transactions in it)
//! commits once for all of them, and each one's [`super::Write::commit`] returns only then, with
//! the outcome of that `COMMIT`: no caller learns of a commit that has not happened. The pages
//! the members share are written to the log once per group instead of once per transaction.
//!
//! What stays true: a transaction is all or nothing (a member that fails or is dropped is rolled
//! back to its savepoint, the others go on); nothing reads what is not committed (a read takes
//! the writer connection only outside any transaction, [`DirectWriter::try_turn`]; members run
//! one after the other, as they would have alone); durability is the `COMMIT`'s. If that
//! `COMMIT` fails, or SQLite rolls the whole transaction back after an I/O or disk-full error,
//! every member is told it failed, and nothing of any of them stays. A group is never left open
//! without someone to close it: a turn for anything but a write transaction (a single statement,
//! the checkpointer) commits it first, and a member waiting for the outcome queues for the turn
//! itself, so if the writer that was waiting gave up, the member commits the group when its
//! turn comes.
//!
//! What a member must mind: it sees the changes of the members before it (they share one
//! transaction), while a read outside the transaction does not until the group commits. A
//! write whose conditional statement found its row already changed, and which then reads that
//! row elsewhere to answer, ends with [`super::Write::rollback_after_others`], which returns once
//! the group's `COMMIT` ran ([`WriterTurn::roll_back_member_after_group`]): a pairing code's
//! take, a QR session's answer, an authentication's ending, a flow's move.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx_core::any::AnyValueKind;
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::connection_use::{ConnectionKind, ConnectionUse, WaitRecorder};
use super::direct::{DirectConnection, Item};

/// The most transactions one group commits together: the first member waits for at most this
/// many others before its commit returns.
pub(crate) const MAX_GROUP: usize = 16;

/// The one connection that writes, with the writers waiting for it in the order they came
/// (see the module documentation).
pub(crate) struct DirectWriter {
    conn: Arc<Mutex<WriterConnection>>,
    /// Writers asleep in the queue for a turn (a member waiting for its group's outcome is not
    /// one): while there are some, a member that commits leaves its group open for them.
    queued: Arc<AtomicUsize>,
    /// How long a writer waits for its turn before the database counts as unavailable.
    wait: Duration,
    /// How long the turns were waited for, and the waits that gave up (`/metrics`).
    waits: WaitRecorder,
    closed: AtomicBool,
}

impl std::fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectWriter").finish_non_exhaustive()
    }
}

/// The writer connection and the group transaction open on it, if any.
pub(crate) struct WriterConnection {
    conn: DirectConnection,
    group: Option<Group>,
}

/// A transaction several writers share until its last one commits it.
struct Group {
    /// Where the members read the `COMMIT`'s outcome (`None` until it ran).
    outcome: Arc<watch::Sender<Option<Outcome>>>,
    /// Transactions released into it so far.
    members: usize,
}

/// How a group's `COMMIT` went: the error's text for the members, who each need an error of
/// their own.
type Outcome = Result<(), String>;

/// A writer's turn: the writer connection, until dropped. Dereferences to the connection.
pub(crate) struct WriterTurn {
    guard: OwnedMutexGuard<WriterConnection>,
    queued: Arc<AtomicUsize>,
}

impl std::ops::Deref for WriterTurn {
    type Target = DirectConnection;

    fn deref(&self) -> &DirectConnection {
        &self.guard.conn
    }
}

impl std::ops::DerefMut for WriterTurn {
    fn deref_mut(&mut self) -> &mut DirectConnection {
        &mut self.guard.conn
    }
}

/// Counts a writer in [`DirectWriter::queued`] until dropped (its turn came, or it gave up).
struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl DirectWriter {
    /// The writer connection to the database file at `path`, with `synchronous` (when its
    /// commits return: `store::durability`); a writer that waited `wait` for its turn gives up
    /// as on a pool timeout.
    pub(crate) fn open(
        path: &Path,
        wait: Duration,
        synchronous: &'static str,
    ) -> Result<Self, sqlx::Error> {
        let conn = DirectConnection::open(path, synchronous)?;
        // As the pool's writer: a commit checkpoints by itself only far behind the checkpointer.
        conn.set_autocheckpoint(super::checkpoint::WRITER_AUTOCHECKPOINT_PAGES)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(WriterConnection { conn, group: None })),
            queued: Arc::new(AtomicUsize::new(0)),
            wait,
            waits: WaitRecorder::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// Waits in the queue for the writer connection, as it is.
    async fn queue(&self) -> Result<WriterTurn, sqlx::Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(sqlx::Error::PoolClosed);
        }
        let started = tokio::time::Instant::now();
        self.queued.fetch_add(1, Ordering::AcqRel);
        let queued = Queued(self.queued.clone());
        let Ok(guard) = tokio::time::timeout(self.wait, self.conn.clone().lock_owned()).await
        else {
            self.waits.timed_out();
            return Err(sqlx::Error::PoolTimedOut);
        };
        drop(queued);
        self.waits.record(started.elapsed());
        Ok(WriterTurn {
            guard,
            queued: self.queued.clone(),
        })
    }

    /// Waits for a turn with the connection outside any transaction: a group left open is
    /// committed first (its members learn the outcome), and a transaction a previous turn could
    /// not roll back (its `ROLLBACK` failed) is rolled back, so it cannot swallow this turn's
    /// statements.
    pub(crate) async fn turn(&self) -> Result<WriterTurn, sqlx::Error> {
        let mut turn = self.queue().await?;
        turn.settle()?;
        Ok(turn)
    }

    /// Waits for a turn for a write transaction: it joins the group left open if there is one
    /// with room ([`WriterTurn::in_group`]); otherwise as [`DirectWriter::turn`].
    pub(crate) async fn write_turn(&self) -> Result<WriterTurn, sqlx::Error> {
        let mut turn = self.queue().await?;
        let joinable = turn
            .guard
            .group
            .as_ref()
            .is_some_and(|g| g.members < MAX_GROUP);
        if !joinable || turn.is_autocommit() {
            turn.settle()?;
        }
        Ok(turn)
    }

    /// A turn at once if the writer connection is free, nobody waits for it, and no transaction
    /// is open on it, for a statement that only reads: the writer is the one connection whose
    /// page cache survives the commits (another connection starts over from the file after every
    /// commit it did not make), so a read on it reads memory instead of the file. The turn is
    /// held only while the statement runs, without an await, so a writer that comes meanwhile
    /// waits microseconds.
    pub(crate) fn try_turn(&self) -> Option<WriterTurn> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let guard = self.conn.clone().try_lock_owned().ok()?;
        // A group or a transaction left open: not for a read.
        let turn = WriterTurn {
            guard,
            queued: self.queued.clone(),
        };
        turn.is_autocommit().then_some(turn)
    }

    /// How busy the writer connection is ([`super::Database::connection_use`]): in use while
    /// a writer (or a read that found it free) holds its turn; the writers waiting are those
    /// asleep in the queue, not the members of a group waiting for its `COMMIT`.
    pub(crate) fn connection_use(&self) -> ConnectionUse {
        let in_use = u64::from(self.conn.try_lock().is_err());
        let open = u64::from(!self.closed.load(Ordering::Acquire));
        ConnectionUse {
            kind: ConnectionKind::SqliteWriter,
            max: 1,
            in_use,
            idle: open.saturating_sub(in_use),
            waiting: self.queued.load(Ordering::Acquire) as u64,
            waits: self.waits.waits(),
            timeouts: self.waits.timeouts(),
            // Opened once, at start-up.
            open_failures: 0,
        }
    }

    /// Refuses turns from now on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl WriterTurn {
    /// Commits the group left open, or rolls back a transaction left open by accident. A group
    /// whose `COMMIT` fails is its members' failure (they are told), not this turn's: the turn
    /// goes on, and its own statements meet whatever broke the commit.
    fn settle(&mut self) -> Result<(), sqlx::Error> {
        if self.guard.group.is_some() {
            if let Err(error) = self.finish_group() {
                tracing::warn!(%error, "a group of write transactions failed to commit");
            }
            return Ok(());
        }
        if !self.is_autocommit() {
            self.run("ROLLBACK", &[])?;
        }
        Ok(())
    }

    /// Whether a write transaction in this turn joins a group that is open (else it starts one).
    pub(crate) fn in_group(&self) -> bool {
        self.guard.group.is_some()
    }

    /// Starts a group: `BEGIN IMMEDIATE`, with this turn's transaction its first member.
    pub(crate) fn start_group(&mut self) -> Result<(), sqlx::Error> {
        self.run("BEGIN IMMEDIATE", &[])?;
        self.guard.group = Some(Group {
            outcome: Arc::new(watch::channel(None).0),
            members: 0,
        });
        Ok(())
    }

    /// Runs a statement of a transaction in the group, refused if SQLite rolled the group's
    /// transaction back meanwhile (after an I/O or disk-full error): run outside it, the
    /// statement would be committed by itself.
    pub(crate) fn run_in_group(
        &mut self,
        sql: &str,
        values: &[AnyValueKind<'_>],
    ) -> Result<Vec<Item>, sqlx::Error> {
        if self.is_autocommit() {
            return Err(self.abort_group());
        }
        self.run(sql, values)
    }

    /// Releases this turn's transaction into its group (a joining member: `RELEASE` of its
    /// savepoint), then commits the group, or leaves it open for the writers queued and waits
    /// for the outcome of its `COMMIT`.
    pub(crate) async fn commit_member(mut self, joined: bool) -> Result<(), sqlx::Error> {
        if self.is_autocommit() {
            return Err(self.abort_group());
        }
        if joined && let Err(e) = self.run("RELEASE member", &[]) {
            self.abort_group();
            return Err(e);
        }
        let Some(group) = self.guard.group.as_mut() else {
            return Err(sqlx::Error::Protocol(
                "a write transaction outside its group".into(),
            ));
        };
        group.members += 1;
        if group.members < MAX_GROUP && self.queued.load(Ordering::Acquire) > 0 {
            let outcome = group.outcome.clone();
            return self.wait_for_group(outcome).await;
        }
        self.finish_group()
    }

    /// Rolls back this turn's transaction: a joining member to its savepoint (the group goes
    /// on, and is committed now if no writer is queued to continue it), the group's first
    /// transaction (alone in it) entirely.
    pub(crate) fn roll_back_member(&mut self, joined: bool) -> Result<(), sqlx::Error> {
        if self.is_autocommit() {
            return Err(self.abort_group());
        }
        if !joined {
            self.guard.group = None;
            self.run("ROLLBACK", &[])?;
            return Ok(());
        }
        if let Err(e) = self
            .run("ROLLBACK TO member", &[])
            .and_then(|_| self.run("RELEASE member", &[]))
        {
            self.abort_group();
            return Err(e);
        }
        if self.queued.load(Ordering::Acquire) == 0 {
            self.finish_group()?;
        }
        Ok(())
    }

    /// Rolls back this turn's transaction as [`Self::roll_back_member`] does, then returns once
    /// the members before it in its group are committed: what its statements saw of theirs is
    /// then what a read outside the transaction sees. The group's failure is this call's error.
    pub(crate) async fn roll_back_member_after_group(
        mut self,
        joined: bool,
    ) -> Result<(), sqlx::Error> {
        self.roll_back_member(joined)?;
        // The group's first transaction saw no one else's rows; a group with no writer queued
        // was committed by the rollback.
        let Some(group) = self.guard.group.as_ref() else {
            return Ok(());
        };
        let outcome = group.outcome.clone();
        self.wait_for_group(outcome).await
    }

    /// Gives the turn to the writers queued and waits for the group's outcome. Should the turn
    /// come back with the group still open (the writer that was queued gave up), commits it.
    async fn wait_for_group(
        self,
        outcome: Arc<watch::Sender<Option<Outcome>>>,
    ) -> Result<(), sqlx::Error> {
        let mut told = outcome.subscribe();
        let mutex = OwnedMutexGuard::mutex(&self.guard).clone();
        let queued = self.queued.clone();
        drop(self);
        loop {
            tokio::select! {
                biased;
                result = told.wait_for(Option::is_some) => {
                    return match result.as_deref() {
                        Ok(Some(outcome)) => outcome_of(outcome),
                        // The sender lives in `outcome`, here: never closed.
                        Ok(None) | Err(_) => Err(group_failed("the group was lost")),
                    };
                }
                guard = mutex.clone().lock_owned() => {
                    let mut turn = WriterTurn { guard, queued: queued.clone() };
                    let ours = turn
                        .guard
                        .group
                        .as_ref()
                        .is_some_and(|g| Arc::ptr_eq(&g.outcome, &outcome));
                    if ours {
                        return turn.finish_group();
                    }
                    // Another group, or none: ours has its outcome, read at the top.
                }
            }
        }
    }

    /// Commits the open group and tells its members how it went.
    pub(crate) fn finish_group(&mut self) -> Result<(), sqlx::Error> {
        let Some(group) = self.guard.group.take() else {
            return Ok(());
        };
        let result = if self.is_autocommit() {
            Err(rolled_back())
        } else {
            self.run("COMMIT", &[]).map(drop)
        };
        if result.is_err() {
            self.roll_back_open_transaction();
        }
        group
            .outcome
            .send_replace(Some(result.as_ref().map(drop).map_err(ToString::to_string)));
        result
    }

    /// Ends the open group as failed (rolled back if SQLite has not done so) and tells its
    /// members; returns the error for this turn's own transaction.
    fn abort_group(&mut self) -> sqlx::Error {
        self.roll_back_open_transaction();
        if let Some(group) = self.guard.group.take() {
            group
                .outcome
                .send_replace(Some(Err(rolled_back().to_string())));
        }
        rolled_back()
    }

    /// Rolls back the transaction still open after a failure, if SQLite has not rolled it back
    /// itself; a failing `ROLLBACK` leaves nothing more to undo here.
    fn roll_back_open_transaction(&mut self) {
        if !self.is_autocommit() {
            let _ = self.run("ROLLBACK", &[]);
        }
    }
}

fn outcome_of(outcome: &Outcome) -> Result<(), sqlx::Error> {
    outcome.clone().map_err(|e| group_failed(&e))
}

/// A member's error for a group whose `COMMIT` failed: nothing of it was stored.
fn group_failed(reason: &str) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(format!(
        "the transaction was not committed: {reason}"
    )))
}

/// The transaction was rolled back by SQLite itself (after an I/O or disk-full error).
fn rolled_back() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(
        "the database rolled the transaction back",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::direct::DirectSqlite;

    /// A database file with a table `t`, and connections to read it.
    fn database() -> (tempfile::TempDir, DirectSqlite) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("direct.db");
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (id TEXT PRIMARY KEY)")
            .expect("table");
        drop(conn);
        let direct = DirectSqlite::open(&path, "NORMAL").expect("open");
        (dir, direct)
    }

    /// The ids in `t`, as a reader sees them.
    fn ids(direct: &DirectSqlite) -> Vec<String> {
        direct
            .run("SELECT id FROM t ORDER BY id", &[])
            .expect("select")
            .into_iter()
            .filter_map(|item| item.right())
            .map(|row| sqlx::Row::get(&row, "id"))
            .collect()
    }

    #[tokio::test]
    async fn a_turn_never_starts_inside_a_transaction_left_open() {
        let (dir, direct) = database();
        let writer = DirectWriter::open(
            &dir.path().join("direct.db"),
            Duration::from_secs(1),
            "NORMAL",
        )
        .expect("writer");
        {
            let mut turn = writer.turn().await.expect("turn");
            turn.run("BEGIN IMMEDIATE", &[]).expect("begin");
            turn.run("INSERT INTO t (id) VALUES ('left open')", &[])
                .expect("insert");
            // Given back without COMMIT or ROLLBACK.
        }
        let mut turn = writer.turn().await.expect("next turn");
        turn.run("INSERT INTO t (id) VALUES ('next')", &[])
            .expect("insert");
        drop(turn);
        let ids = ids(&direct);
        assert_eq!(
            ids,
            ["next"],
            "the open transaction was rolled back, the next committed"
        );
    }

    #[tokio::test]
    async fn reads_take_the_writer_only_while_it_is_free_and_leave_no_transaction() {
        let (dir, _direct) = database();
        let writer = DirectWriter::open(
            &dir.path().join("direct.db"),
            Duration::from_secs(1),
            "NORMAL",
        )
        .expect("writer");
        let turn = writer.turn().await.expect("turn");
        assert!(writer.try_turn().is_none(), "a writer holds it");
        drop(turn);
        let mut free = writer.try_turn().expect("free");
        free.run_alone("SELECT id FROM t", &[]).expect("read");
        // A statement that begins a transaction is rolled back and refused.
        let Err(e) = free.run_alone("BEGIN IMMEDIATE", &[]) else {
            panic!("a transaction outside a write")
        };
        assert!(matches!(e, sqlx::Error::Protocol(_)), "{e}");
        assert!(free.is_autocommit());
        drop(free);
        // A writer queued for its turn: when the turn ends it passes to that writer, and a read
        // does not jump the queue.
        let held = writer.turn().await.expect("turn");
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let queued = tokio::spawn({
            let conn = writer.conn.clone();
            async move {
                let turn = conn.lock_owned().await;
                let _ = released.await;
                drop(turn);
            }
        });
        // On the test's one thread, the spawned writer runs (and queues) while this one yields.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert!(writer.try_turn().is_none(), "the queued writer's turn");
        let _ = release.send(());
        queued.await.expect("queued writer");
        assert!(writer.try_turn().is_some());
        writer.close();
        assert!(writer.try_turn().is_none(), "closed");
    }
}
