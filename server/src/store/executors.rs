//! Executors for statements that need no transaction: [`Reads`] ([`super::Database::pool`])
//! and [`Writes`] ([`super::Database::writer`]).

use futures_util::stream::BoxStream;
use sqlx::Describe;
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, AnyPool, Either, Execute, Executor};
use std::sync::Arc;

use super::direct::{DirectSqlite, DirectWriter, first_row_with, stream_with};

/// The executor for statements that need no connection of their own: on PostgreSQL the pool;
/// on SQLite the `DirectSqlite` connections (`store/direct.rs`), on the calling thread (the pool stays for
/// preparing and describing statements, which nothing on a request path does).
#[derive(Debug, Clone)]
pub struct Reads(Inner);

#[derive(Debug, Clone)]
enum Inner {
    /// Each statement on a pooled connection.
    Pool(AnyPool),
    /// Each statement on the calling thread.
    Direct {
        /// The connections statements run on.
        direct: Arc<DirectSqlite>,
        /// The pool, to prepare and describe statements.
        pool: AnyPool,
    },
}

impl Reads {
    /// Each statement on a connection of `pool`.
    pub(crate) fn pool(pool: AnyPool) -> Self {
        Reads(Inner::Pool(pool))
    }

    /// Each statement on a connection of `direct`; `pool` prepares and describes statements.
    pub(crate) fn direct(direct: Arc<DirectSqlite>, pool: AnyPool) -> Self {
        Reads(Inner::Direct { direct, pool })
    }

    /// Closes the direct connections (the pool closes with the database's other pools).
    pub(crate) fn close(&self) {
        if let Inner::Direct { direct, .. } = &self.0 {
            direct.close();
        }
    }

    fn any_pool(&self) -> &AnyPool {
        match &self.0 {
            Inner::Pool(pool) | Inner::Direct { pool, .. } => pool,
        }
    }
}

impl<'c> Executor<'c> for &'c Reads {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match &self.0 {
            Inner::Pool(pool) => pool.fetch_many(query),
            Inner::Direct { direct, .. } => {
                stream_with(
                    query,
                    move |sql, values| async move { direct.run(sql, &values) },
                )
            }
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
        match &self.0 {
            Inner::Pool(pool) => pool.fetch_optional(query),
            Inner::Direct { direct, .. } => {
                first_row_with(
                    query,
                    move |sql, values| async move { direct.run(sql, &values) },
                )
            }
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
        self.any_pool().prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_util::future::BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.any_pool().describe(sql)
    }
}

/// The executor for single writes: on PostgreSQL the pool; on SQLite one statement in the
/// writer's turn (`DirectWriter`, `store/direct.rs`), on the calling thread, committed by itself.
#[derive(Debug, Clone)]
pub struct Writes(WritesInner);

#[derive(Debug, Clone)]
enum WritesInner {
    Pool(AnyPool),
    Direct {
        writer: Arc<DirectWriter>,
        /// The pool, to prepare and describe statements.
        pool: AnyPool,
    },
}

impl Writes {
    /// Each statement on a connection of `pool`.
    pub(crate) fn pool(pool: AnyPool) -> Self {
        Writes(WritesInner::Pool(pool))
    }

    /// Each statement in a turn of `writer`; `pool` prepares and describes statements.
    pub(crate) fn direct(writer: Arc<DirectWriter>, pool: AnyPool) -> Self {
        Writes(WritesInner::Direct { writer, pool })
    }

    fn any_pool(&self) -> &AnyPool {
        match &self.0 {
            WritesInner::Pool(pool) | WritesInner::Direct { pool, .. } => pool,
        }
    }
}

impl<'c> Executor<'c> for &'c Writes {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match &self.0 {
            WritesInner::Pool(pool) => pool.fetch_many(query),
            WritesInner::Direct { writer, .. } => {
                stream_with(query, move |sql, values| async move {
                    writer.turn().await?.run(sql, &values)
                })
            }
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
        match &self.0 {
            WritesInner::Pool(pool) => pool.fetch_optional(query),
            WritesInner::Direct { writer, .. } => {
                first_row_with(query, move |sql, values| async move {
                    writer.turn().await?.run(sql, &values)
                })
            }
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
        self.any_pool().prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_util::future::BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.any_pool().describe(sql)
    }
}
