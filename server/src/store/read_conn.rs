//! A request's own read connection ([`super::Database::reader`]): on PostgreSQL a connection
//! of the requests' own ([`super::pg_connections`]) its write transaction can run on too; on
//! SQLite the direct connections (`store/direct.rs`), each statement on whichever is idle, on
//! the calling thread. A SQLite statement outside a transaction holds nothing after it ran, so
//! a request keeps no connection between its statements there: connections stay as few as the
//! threads running statements, and their page caches warm.

use futures_util::stream::BoxStream;
use sqlx::Describe;
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, Either, Execute, Executor};

use super::executors::Statements;
use super::pg_connections::HeldConnection;

/// A request's read connection, given back when dropped. It dereferences to the
/// [`ReadHandle`] storage functions take.
#[derive(Debug)]
pub struct ReadConn(ReadHandle);

/// The connection inside a [`ReadConn`]; `&mut ReadHandle` is a [`sqlx::Executor`].
pub struct ReadHandle(Inner);

enum Inner {
    Held(HeldConnection),
    /// SQLite: each statement as a single read ([`super::Database::pool`]).
    Direct(Statements),
}

impl std::fmt::Debug for ReadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            Inner::Held(_) => "pool",
            Inner::Direct(_) => "direct",
        };
        f.debug_tuple("ReadConn").field(&kind).finish()
    }
}

impl ReadConn {
    /// A connection of the requests' own (PostgreSQL).
    pub(crate) fn held(conn: HeldConnection) -> Self {
        ReadConn(ReadHandle(Inner::Held(conn)))
    }

    /// Each statement as a single read of `reads` (SQLite's direct connections).
    pub(crate) fn direct(reads: Statements) -> Self {
        ReadConn(ReadHandle(Inner::Direct(reads)))
    }

    /// The connection, for a write transaction or a single write to run on (PostgreSQL).
    pub(crate) fn held_connection(&mut self) -> Option<&mut HeldConnection> {
        match &mut self.0.0 {
            Inner::Held(held) => Some(held),
            Inner::Direct(_) => None,
        }
    }
}

impl std::ops::Deref for ReadConn {
    type Target = ReadHandle;

    fn deref(&self) -> &ReadHandle {
        &self.0
    }
}

impl std::ops::DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut ReadHandle {
        &mut self.0
    }
}

impl<'c> Executor<'c> for &'c mut ReadHandle {
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
            Inner::Held(held) => held.fetch_many(query),
            Inner::Direct(reads) => (&*reads).fetch_many(query),
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
            Inner::Held(held) => held.fetch_optional(query),
            Inner::Direct(reads) => (&*reads).fetch_optional(query),
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
            Inner::Held(held) => held.prepare_with(sql, parameters),
            Inner::Direct(reads) => (&*reads).prepare_with(sql, parameters),
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
            Inner::Held(held) => held.describe(sql),
            Inner::Direct(reads) => (&*reads).describe(sql),
        }
    }
}
