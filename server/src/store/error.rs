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
            // or its credentials no longer work (28000, 28P01); a deadlock it broke by refusing
            // this transaction (40P01) or a serialization failure (40001), which a retry gets
            // past. SQLite: 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL and their extended codes (low
            // byte).
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    code,
                    "57P01"
                        | "57P02"
                        | "57P03"
                        | "55000"
                        | "3D000"
                        | "28000"
                        | "28P01"
                        | "40P01"
                        | "40001"
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

    /// A database's refusal with `code`, as the driver reports it.
    #[derive(Debug)]
    struct Refusal(&'static str);

    impl std::fmt::Display for Refusal {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "refused with {}", self.0)
        }
    }

    impl std::error::Error for Refusal {}

    impl sqlx::error::DatabaseError for Refusal {
        fn message(&self) -> &str {
            "refused"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn refused(code: &'static str) -> StoreError {
        StoreError::from(sqlx::Error::Database(Box::new(Refusal(code))))
    }

    #[test]
    fn a_broken_deadlock_is_retryable_and_a_constraint_is_not() {
        for code in ["40P01", "40001", "57P01", "08006", "53300", "5", "517"] {
            assert!(refused(code).is_unavailable(), "{code}");
        }
        for code in ["23505", "23503", "42P01", "19", "2067"] {
            assert!(!refused(code).is_unavailable(), "{code}");
        }
    }
}
