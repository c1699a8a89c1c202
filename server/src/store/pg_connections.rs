//! PostgreSQL connections for requests, given back without a round trip.
//!
//! sqlx's pool tests every connection given back to it with a ping (a `Sync`, answered by a
//! `ReadyForQuery`) before another caller may take it: one more round trip for each statement
//! run on the pool, a wake-up of the database's backend and one of this process, for a
//! connection that has just answered. Requests take their connections from [`PgConnections`]
//! instead:
//! - a connection given back with nothing left to send goes straight back to the idle ones;
//!   what remains of its last answer (a statement read up to its first row, then dropped) is
//!   read by the next statement run on it, as sqlx reads the `ReadyForQuery` it is owed before
//!   it sends anything;
//! - one given back with something still to send (the `ROLLBACK` a transaction dropped
//!   uncommitted queues, a message half sent when its request was dropped) is flushed and
//!   pinged first, in a task of its own, as sqlx's pool does; it is closed if that fails, and
//!   its place stays taken until then;
//! - one whose statement failed for another reason than the database's answer to it (the
//!   connection lost, a protocol error, the server shutting the session) is closed, and so are
//!   the idle ones: a lost connection mostly means a lost or restarted server.
//!
//! At most `max` connections are held or idle at once; a caller waits for its turn in arrival
//! order ([`tokio::sync::Semaphore`] is fair) and gives up after the acquire timeout with
//! [`sqlx::Error::PoolTimedOut`], which the store answers as unavailability, as it does sqlx's
//! own pool timeouts. A connection idle for five minutes is closed instead of handed out.
//!
//! Written here, not taken from a library: sqlx 0.8's pool has no setting to leave the ping
//! out, and the store's statements are sqlx's (`sqlx::Any`), so the connections must stay
//! sqlx connections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::any::{AnyConnectOptions, AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, AnyConnection, Describe, Either, Execute, Executor};
use sqlx::{ConnectOptions, Connection, TransactionManager};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout, timeout_at};

use super::connection_use::{ConnectionKind, ConnectionUse, WaitRecorder};

/// How long a connection given back with something still to send may take to flush it and
/// answer a ping before it is closed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may stay idle and still be handed out: older ones are closed when a
/// caller would otherwise get one (as sqlx's pool does after its idle timeout), so a session
/// the server or a firewall ended while nobody used it is not the one a request fails on.
const IDLE_LIMIT: Duration = Duration::from_secs(300);

/// The requests' PostgreSQL connections (see the module's documentation). Clones share them.
#[derive(Clone)]
pub(crate) struct PgConnections(Arc<Shared>);

struct Shared {
    options: AnyConnectOptions,
    /// The idle connections, each with when it was given back; the most recent last.
    idle: Mutex<Vec<(AnyConnection, Instant)>>,
    /// One permit per connection held, idle or being opened; closed with the database handle.
    places: Arc<Semaphore>,
    /// How many places there are.
    max: usize,
    acquire_timeout: Duration,
    /// The callers waiting for a place, and how long the waits took.
    waits: WaitRecorder,
}

impl std::fmt::Debug for PgConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnections")
            .field("idle", &self.idle_count())
            .field("free", &self.0.places.available_permits())
            .finish()
    }
}

impl PgConnections {
    /// At most `max` connections (at least one) opened with `options`; a caller waits at most
    /// `acquire_timeout` for one.
    pub(crate) fn new(options: AnyConnectOptions, max: u32, acquire_timeout: Duration) -> Self {
        let max = usize::try_from(max.max(1)).unwrap_or(1);
        PgConnections(Arc::new(Shared {
            options,
            idle: Mutex::new(Vec::with_capacity(max)),
            places: Arc::new(Semaphore::new(max)),
            max,
            acquire_timeout,
            waits: WaitRecorder::default(),
        }))
    }

    /// A connection: the most recently given back of the idle ones, else a new one. Waits for
    /// a free place at most the acquire timeout, opening included.
    pub(crate) async fn acquire(&self) -> Result<HeldConnection, sqlx::Error> {
        let started = Instant::now();
        let deadline = started + self.0.acquire_timeout;
        let waiting = self.0.waits.waiting();
        let place = match timeout_at(deadline, self.0.places.clone().acquire_owned()).await {
            Err(_) => {
                self.0.waits.timed_out();
                return Err(sqlx::Error::PoolTimedOut);
            }
            Ok(Err(_)) => return Err(sqlx::Error::PoolClosed),
            Ok(Ok(place)) => place,
        };
        drop(waiting);
        self.0.waits.record(started.elapsed());
        let idle = self.0.idle.lock().ok().and_then(|mut idle| {
            // Given back in order, so once the most recent is too old, all are.
            let (conn, since) = idle.pop()?;
            if since.elapsed() < IDLE_LIMIT {
                Some(conn)
            } else {
                idle.clear();
                None
            }
        });
        let conn = match idle {
            Some(conn) => conn,
            None => match timeout_at(deadline, self.0.options.connect()).await {
                Err(_) => {
                    self.0.waits.timed_out();
                    return Err(sqlx::Error::PoolTimedOut);
                }
                Ok(opened) => opened.inspect_err(|_| self.0.waits.open_failed())?,
            },
        };
        Ok(HeldConnection {
            conn: Some(conn),
            place: Some(place),
            home: self.0.clone(),
            unusable: false,
        })
    }

    /// How many connections are idle.
    pub(crate) fn idle_count(&self) -> usize {
        self.0.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    /// How busy the connections are ([`super::Database::connection_use`]). A place is in use
    /// from the moment a caller takes it until its connection is back among the idle ones
    /// (opening, flushing and closing included).
    pub(crate) fn connection_use(&self) -> ConnectionUse {
        let free = self.0.places.available_permits();
        ConnectionUse {
            kind: ConnectionKind::PostgresRequests,
            max: self.0.max as u64,
            in_use: self.0.max.saturating_sub(free) as u64,
            idle: self.idle_count() as u64,
            waiting: self.0.waits.waiting_now(),
            waits: self.0.waits.waits(),
            timeouts: self.0.waits.timeouts(),
            open_failures: self.0.waits.open_failures(),
        }
    }

    /// Refuses new callers (and those waiting) with [`sqlx::Error::PoolClosed`] and closes the
    /// idle connections; held ones are closed when given back.
    pub(crate) async fn close(&self) {
        self.0.places.close();
        let idle = self
            .0
            .idle
            .lock()
            .map(|mut idle| std::mem::take(&mut *idle))
            .unwrap_or_default();
        for (conn, _) in idle {
            let _ = conn.close().await;
        }
    }
}

impl Shared {
    /// Takes `conn` back as idle, unless the connections were closed meanwhile.
    fn keep(&self, conn: AnyConnection) {
        if self.places.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push((conn, Instant::now()));
        }
    }

    /// Closes the idle connections (dropped: a connection found lost suggests they are too).
    fn forget_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// Whether `error` leaves the connection it came from unfit for another statement: anything
/// but the database's answer to the statement (a constraint, a serialization failure, a
/// statement canceled by its timeout, a row that does not decode), or an answer that ends the
/// session (class 57, operator intervention, but for `57014` query canceled; and 08, connection
/// exception).
pub(crate) fn leaves_connection_unusable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            (code.starts_with("57") && code != "57014") || code.starts_with("08")
        }),
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_) => false,
        _ => true,
    }
}

/// A connection taken from [`PgConnections`], given back when dropped (see the module's
/// documentation for how).
pub(crate) struct HeldConnection {
    /// Present until dropped.
    conn: Option<AnyConnection>,
    place: Option<OwnedSemaphorePermit>,
    home: Arc<Shared>,
    unusable: bool,
}

impl std::fmt::Debug for HeldConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldConnection")
            .field("unusable", &self.unusable)
            .finish()
    }
}

impl HeldConnection {
    /// The connection, to run statements (or a transaction) on.
    pub(crate) fn connection(&mut self) -> Option<&mut AnyConnection> {
        self.conn.as_mut()
    }

    /// The connection and the mark [`HeldConnection::note`] sets, borrowed apart (for a stream
    /// of results that notes its own failure).
    fn parts(&mut self) -> (Option<&mut AnyConnection>, &mut bool) {
        (self.conn.as_mut(), &mut self.unusable)
    }

    /// Notes a statement's failure: one that leaves the connection unfit
    /// ([`leaves_connection_unusable`]) closes it when it is given back.
    pub(crate) fn note(&mut self, error: &sqlx::Error) {
        if leaves_connection_unusable(error) {
            self.unusable = true;
        }
    }

    /// Begins a transaction on the connection (`store::Write` on PostgreSQL).
    pub(crate) async fn begin(&mut self) -> Result<(), sqlx::Error> {
        let begun = match self.conn.as_mut() {
            Some(conn) => Transactions::begin(conn, None).await,
            None => Err(sqlx::Error::PoolClosed),
        };
        self.noted(begun)
    }

    /// Commits the transaction [`HeldConnection::begin`] began, or rolls it back.
    pub(crate) async fn end(&mut self, commit: bool) -> Result<(), sqlx::Error> {
        let ended = match self.conn.as_mut() {
            Some(conn) if commit => Transactions::commit(conn).await,
            Some(conn) => Transactions::rollback(conn).await,
            None => Err(sqlx::Error::PoolClosed),
        };
        self.noted(ended)
    }

    /// Queues the `ROLLBACK` of a transaction left open (its owner dropped), sent before the
    /// connection is used again (see [`Drop`]).
    pub(crate) fn roll_back_if_open(&mut self) {
        if let Some(conn) = self.conn.as_mut()
            && Transactions::get_transaction_depth(conn) > 0
        {
            Transactions::start_rollback(conn);
        }
    }

    /// `result`, its failure noted.
    fn noted<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if let Err(error) = &result {
            self.note(error);
        }
        result
    }
}

/// The transaction manager of the store's connections.
type Transactions = <Any as sqlx::Database>::TransactionManager;

/// Statements run on the held connection; a failure that leaves it unfit is noted
/// ([`HeldConnection::note`]).
impl<'c> Executor<'c> for &'c mut HeldConnection {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match self.parts() {
            (Some(conn), unusable) => conn
                .fetch_many(query)
                .inspect_err(move |error| {
                    if leaves_connection_unusable(error) {
                        *unusable = true;
                    }
                })
                .boxed(),
            (None, _) => futures_util::stream::once(async { Err(sqlx::Error::PoolClosed) }).boxed(),
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
        Box::pin(async move {
            let row = match self.connection() {
                Some(conn) => conn.fetch_optional(query).await,
                None => Err(sqlx::Error::PoolClosed),
            };
            self.noted(row)
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
        match self.connection() {
            Some(conn) => conn.prepare_with(sql, parameters),
            None => Box::pin(async { Err(sqlx::Error::PoolClosed) }),
        }
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_util::future::BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        match self.connection() {
            Some(conn) => conn.describe(sql),
            None => Box::pin(async { Err(sqlx::Error::PoolClosed) }),
        }
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let (Some(mut conn), place) = (self.conn.take(), self.place.take()) else {
            return;
        };
        if self.unusable {
            self.home.forget_idle();
            return;
        }
        if !conn.should_flush() {
            self.home.keep(conn);
            return;
        }
        // Something is still to be sent: flushed and pinged before reuse, the place held
        // until then. Without a runtime to do that in, the connection is closed.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let home = self.home.clone();
        runtime.spawn(async move {
            if let Ok(Ok(())) = timeout(FLUSH_TIMEOUT, conn.ping()).await {
                home.keep(conn);
            }
            drop(place);
        });
    }
}

#[cfg(test)]
mod tests;
