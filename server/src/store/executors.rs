//! The executor for statements that need no transaction of their own: [`Statements`], which
//! [`super::Database::pool`] (reads) and [`super::Database::writer`] (single writes) hand out.

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::Describe;
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, AnyPool, Either, Execute, Executor};
use sqlx_core::any::AnyValueKind;
use std::sync::Arc;

use super::direct::{DirectSqlite, Item, first_row_with, stream_with};
use super::pg_connections::PgConnections;
use super::writer::DirectWriter;

/// Where statements run: on PostgreSQL each on a connection of the requests' own
/// (`store::pg_connections`, given back without a round trip); on SQLite on the calling
/// thread (`store/direct.rs`), a read on the writer connection if it is free at that instant,
/// otherwise on an idle direct connection, a write in a turn of the writer connection,
/// committed by itself. Neither leaves a transaction open on the writer. The pool stays for preparing and describing
/// statements, which nothing on a request path does.
#[derive(Debug, Clone)]
pub struct Statements {
    pool: AnyPool,
    on: On,
}

/// Where a [`Statements`]' statements run.
#[derive(Debug, Clone)]
enum On {
    /// SQLite, on the calling thread.
    Direct(Direct),
    /// PostgreSQL, each on a connection of its own.
    Postgres(PgConnections),
}

#[derive(Debug, Clone)]
enum Direct {
    /// Reads on the writer connection when it is free ([`DirectWriter::try_turn`]), otherwise
    /// on an idle reader.
    Reads(Arc<DirectSqlite>, Arc<DirectWriter>),
    Writes(Arc<DirectWriter>),
}

impl Statements {
    /// Each statement on a connection of `connections`; `pool` prepares and describes
    /// statements.
    pub(crate) fn postgres(connections: PgConnections, pool: AnyPool) -> Self {
        Statements {
            pool,
            on: On::Postgres(connections),
        }
    }

    /// Reads on the connections of `direct`, or on `writer`'s while it is free; `pool`
    /// prepares and describes statements.
    pub(crate) fn direct_reads(
        direct: Arc<DirectSqlite>,
        writer: Arc<DirectWriter>,
        pool: AnyPool,
    ) -> Self {
        Statements {
            pool,
            on: On::Direct(Direct::Reads(direct, writer)),
        }
    }

    /// Writes in turns of `writer`; `pool` prepares and describes statements.
    pub(crate) fn direct_writes(writer: Arc<DirectWriter>, pool: AnyPool) -> Self {
        Statements {
            pool,
            on: On::Direct(Direct::Writes(writer)),
        }
    }

    /// Closes the direct connections (the pool closes with the database's other pools, the
    /// PostgreSQL connections with the database handle).
    pub(crate) fn close(&self) {
        match &self.on {
            On::Direct(Direct::Reads(direct, _)) => direct.close(),
            On::Direct(Direct::Writes(writer)) => writer.close(),
            On::Postgres(_) => {}
        }
    }
}

impl Direct {
    async fn run(&self, sql: &str, values: &[AnyValueKind<'_>]) -> Result<Vec<Item>, sqlx::Error> {
        match self {
            Direct::Reads(direct, writer) => match writer.try_turn() {
                Some(mut turn) => turn.run_alone(sql, values),
                None => direct.run(sql, values),
            },
            Direct::Writes(writer) => writer.turn().await?.run_alone(sql, values),
        }
    }
}

impl<'c> Executor<'c> for &'c Statements {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match &self.on {
            On::Direct(direct) => stream_with(query, move |sql, values| async move {
                direct.run(sql, &values).await
            }),
            On::Postgres(connections) => all_on_held(connections.clone(), query),
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
        match &self.on {
            On::Direct(direct) => first_row_with(query, move |sql, values| async move {
                direct.run(sql, &values).await
            }),
            On::Postgres(connections) => {
                let connections = connections.clone();
                Box::pin(async move {
                    let mut held = connections.acquire().await?;
                    held.fetch_optional(query).await
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
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> futures_util::future::BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.describe(sql)
    }
}

/// Runs `query` on a connection of `connections` and answers its results once all are read
/// (as SQLite's direct statements do), the connection given back before the first is seen.
fn all_on_held<'e, 'q: 'e, E>(
    connections: PgConnections,
    query: E,
) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
where
    E: 'q + Execute<'q, Any>,
{
    let items = async move {
        let mut held = connections.acquire().await?;
        let items: Vec<_> = held.fetch_many(query).try_collect().await?;
        Ok::<_, sqlx::Error>(items)
    };
    futures_util::stream::once(items)
        .map_ok(|items| futures_util::stream::iter(items.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}
