//! Errors of starting and administering a server (the HTTP API has its own, in `http::errors`).

use crate::store::StoreError;

/// Starting, stopping or administering the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The database could not be reached, migrated or queried.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    PushCredentials(#[from] crate::delivery::push::PushCredentialsError),
    /// The thing already exists.
    #[error("already exists: {0}")]
    AlreadyExists(&'static str),
    /// A setting is not usable (a URL that does not parse, a missing or unreadable file); the
    /// message names the setting, never a secret it holds.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The TLS certificate chain or private key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
}

impl From<crate::ip_table::IpTableError> for ServerError {
    fn from(e: crate::ip_table::IpTableError) -> Self {
        ServerError::InvalidInput(e.0)
    }
}

impl From<sqlx::Error> for ServerError {
    fn from(e: sqlx::Error) -> Self {
        ServerError::Store(StoreError::from(e))
    }
}

/// The administration error for a domain error of the admin operations (registration, key
/// rotation): `not_found` names what a `not_found` refusal is about.
pub(crate) fn admin_error(e: crate::domain::DomainError, not_found: &'static str) -> ServerError {
    match e {
        crate::domain::DomainError::Refused { code, message, .. } => {
            if code == tessera_protocol::error::ErrorCode::NotFound {
                ServerError::NotFound(not_found)
            } else {
                ServerError::InvalidInput(message)
            }
        }
        crate::domain::DomainError::Unavailable(e) | crate::domain::DomainError::Store(e) => {
            ServerError::Store(e)
        }
        crate::domain::DomainError::Internal(what) => ServerError::Corrupted(what),
    }
}
