//! Storage: one portable schema on SQLite or PostgreSQL through `sqlx`'s `Any` driver, with
//! migrations per database under `server/migrations/`. All SQL uses `$N` placeholders (both
//! drivers accept them), integers are `BIGINT`, times are Unix seconds.
//!
//! Transactions that write start with their write, so SQLite takes its write lock first and two
//! writers never deadlock upgrading read locks.

pub mod applications;
pub mod authentications;
pub mod ciba;
pub mod enrollments;
pub mod nonces;
pub mod otp;
pub mod otp_challenges;
pub mod pairing_codes;
pub mod qr_sessions;
pub mod server_keys;
pub mod throttle;
pub mod users;

use std::str::FromStr;
use std::sync::Once;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::error::ServerError;

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

/// A connection pool with the schema migrated.
#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
    engine: Engine,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Database({:?})", self.engine)
    }
}

impl Database {
    /// Connects to `url` (`sqlite://FILE`, created if missing, or `postgres://…`) and runs the
    /// migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, ServerError> {
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
            (Engine::Postgres, url.to_string())
        } else {
            return Err(ServerError::UnsupportedDatabase);
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|_| ServerError::UnsupportedDatabase)?
            .disable_statement_logging();
        let mut pool_options = AnyPoolOptions::new().max_connections(max_connections.max(1));
        if engine == Engine::Sqlite {
            pool_options = pool_options.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options.connect_with(options).await?;
        if engine == Engine::Sqlite {
            // Persistent per database file: readers never block the writer.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let migrator = match engine {
            Engine::Sqlite => &SQLITE_MIGRATIONS,
            Engine::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| ServerError::Migration(e.to_string()))?;
        Ok(Self { pool, engine })
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// A trivial query, for health checks.
    pub async fn ping(&self) -> Result<(), ServerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
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
