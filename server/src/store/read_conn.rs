//! A request's own read connection ([`super::Database::reader`]): on PostgreSQL a pooled
//! connection its write transaction can run on too; on SQLite a direct connection
//! (`store/direct.rs`) its statements run on, on the calling thread.

use futures_util::stream::BoxStream;
use sqlx::Describe;
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::pool::PoolConnection;
use sqlx::{Any, Either, Execute, Executor};
use std::sync::Arc;

use super::direct::{DirectConnection, DirectSqlite, first_row_with, not_on_direct, stream_with};

/// A request's read connection, given back when dropped. It dereferences to the
/// [`ReadHandle`] storage functions take.
#[derive(Debug)]
pub struct ReadConn(ReadHandle);

/// The connection inside a [`ReadConn`]; `&mut ReadHandle` is a [`sqlx::Executor`].
pub struct ReadHandle(Inner);

enum Inner {
    Pool(PoolConnection<Any>),
    Direct {
        conn: Option<DirectConnection>,
        owner: Arc<DirectSqlite>,
    },
}

impl std::fmt::Debug for ReadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            Inner::Pool(_) => "pool",
            Inner::Direct { .. } => "direct",
        };
        f.debug_tuple("ReadConn").field(&kind).finish()
    }
}

impl ReadConn {
    /// A pooled connection.
    pub(crate) fn pool(conn: PoolConnection<Any>) -> Self {
        ReadConn(ReadHandle(Inner::Pool(conn)))
    }

    /// A direct connection taken from `owner`, given back to it when dropped.
    pub(crate) fn direct(owner: Arc<DirectSqlite>) -> Result<Self, sqlx::Error> {
        let conn = owner.take()?;
        Ok(ReadConn(ReadHandle(Inner::Direct {
            conn: Some(conn),
            owner,
        })))
    }

    /// The pooled connection, for a write transaction to run on (PostgreSQL).
    pub(crate) fn pooled(&mut self) -> Option<&mut PoolConnection<Any>> {
        match &mut self.0.0 {
            Inner::Pool(conn) => Some(conn),
            Inner::Direct { .. } => None,
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

impl Drop for ReadHandle {
    fn drop(&mut self) {
        if let Inner::Direct { conn, owner } = &mut self.0
            && let Some(conn) = conn.take()
        {
            owner.give_back(conn);
        }
    }
}

impl ReadHandle {
    fn run(
        conn: &mut Option<DirectConnection>,
        sql: &str,
        values: &[sqlx_core::any::AnyValueKind<'_>],
    ) -> Result<Vec<super::direct::Item>, sqlx::Error> {
        conn.as_mut()
            .ok_or(sqlx::Error::PoolClosed)?
            .run(sql, values)
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
            Inner::Pool(conn) => (&mut **conn).fetch_many(query),
            Inner::Direct { conn, .. } => stream_with(query, move |sql, values| async move {
                ReadHandle::run(conn, sql, &values)
            }),
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
            Inner::Pool(conn) => (&mut **conn).fetch_optional(query),
            Inner::Direct { conn, .. } => first_row_with(query, move |sql, values| async move {
                ReadHandle::run(conn, sql, &values)
            }),
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
            Inner::Pool(conn) => (&mut **conn).prepare_with(sql, parameters),
            Inner::Direct { .. } => not_on_direct("prepared"),
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
            Inner::Pool(conn) => (&mut **conn).describe(sql),
            Inner::Direct { .. } => not_on_direct("described"),
        }
    }
}
