//! The storage layer's error: what failed, with the database driver's error kept as the source.

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or cannot take the work now (connection lost, pool
    /// exhausted, server shutting down, SQLite busy): retrying later may succeed.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A statement failed for another reason (a constraint, a bug).
    #[error("a database statement failed")]
    Query(#[source] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed")]
    Migration(#[source] sqlx::migrate::MigrateError),
    /// The database URL is not `sqlite://…` or `postgres://…`.
    #[error("unsupported database URL (expected sqlite://… or postgres://…)")]
    UnsupportedDatabase,
    /// Stored data is not what this server wrote (a corrupted row).
    #[error("stored data is corrupted: {0}")]
    Corrupted(&'static str),
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The thing already exists.
    #[error("already exists: {0}")]
    AlreadyExists(&'static str),
    /// Secrets at rest: the master key is missing or wrong, or a stored secret does not open.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    /// A secret column was used before the data key was opened ([`super::Database::open_secrets`]).
    #[error("the database's data key is not open")]
    SecretsLocked,
}

impl StoreError {
    /// Whether the database was unavailable (as opposed to refusing this statement).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailability(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Query(e)
        }
    }
}

/// Whether `e` says the database could not do the work now, rather than refusing it.
fn is_unavailability(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // PostgreSQL: class 08 (connection exception), 53 (insufficient resources),
            // 57P01..57P03 (shutting down, cannot connect now), and what a new connection is
            // refused with while the database is closed to connections (55000), gone (3D000)
            // or its credentials no longer work (28000, 28P01). SQLite: 5 BUSY, 6 LOCKED,
            // 10 IOERR, 13 FULL and their extended codes (low byte).
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    code,
                    "57P01" | "57P02" | "57P03" | "55000" | "3D000" | "28000" | "28P01"
                )
                || code
                    .parse::<i64>()
                    .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_io_failures_are_unavailability() {
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(StoreError::from(sqlx::Error::PoolClosed).is_unavailable());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(StoreError::from(sqlx::Error::Io(io)).is_unavailable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_unavailable());
    }
}
