//! Errors of starting and administering a server (the HTTP API has its own, in `api::errors`).

/// Starting, stopping or administering the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The database URL is not `sqlite://…` or `postgres://…`.
    #[error("unsupported database URL (expected sqlite://… or postgres://…)")]
    UnsupportedDatabase,
    /// The database could not be reached or a query failed.
    #[error("database: {0}")]
    Database(String),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migration(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// Stored data is not what this server wrote (a corrupted row).
    #[error("stored data is corrupted: {0}")]
    Corrupted(&'static str),
    /// Invalid input to an admin operation.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// Push credentials given to an admin operation are unusable.
    #[error("invalid push credentials: {0}")]
    PushCredentials(#[from] crate::push::PushCredentialsError),
    /// The thing already exists.
    #[error("already exists: {0}")]
    AlreadyExists(&'static str),
}

impl From<sqlx::Error> for ServerError {
    fn from(e: sqlx::Error) -> Self {
        // sqlx's messages describe the failure (connection, constraint), not bound values.
        ServerError::Database(e.to_string())
    }
}
