//! The domain's error: a rule refused the request, or the storage under it failed.

use tessera_protocol::api::AuthenticationMethod;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::FlowActionName;

use crate::store::StoreError;

/// Why a domain operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A rule refused the request. The code is the protocol's stable error code; the message
    /// is safe to show the caller (no secret, no submitted value).
    #[error("{message}")]
    Refused {
        /// The stable code.
        code: ErrorCode,
        /// What to tell the caller.
        message: String,
        /// For `mandatory_methods_missing`: the methods to register first.
        missing_methods: Vec<AuthenticationMethod>,
        /// For `action_not_allowed`: the flow actions allowed now.
        allowed_actions: Vec<FlowActionName>,
    },
    /// The database is unavailable: the caller should retry later.
    #[error("the database is unavailable")]
    Unavailable(#[source] StoreError),
    /// Storage failed for another reason.
    #[error("storage failed")]
    Store(#[source] StoreError),
    /// Something this server should never do failed (signing, encoding its own data).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl DomainError {
    /// A refusal with `code` and a safe `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        DomainError::Refused {
            code,
            message: message.into(),
            missing_methods: Vec::new(),
            allowed_actions: Vec::new(),
        }
    }

    /// `invalid_request` with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// Adds the methods a `mandatory_methods_missing` refusal lists.
    pub fn with_missing_methods(mut self, methods: Vec<AuthenticationMethod>) -> Self {
        if let DomainError::Refused {
            missing_methods, ..
        } = &mut self
        {
            *missing_methods = methods;
        }
        self
    }

    /// Adds the actions an `action_not_allowed` refusal lists.
    pub fn with_allowed_actions(mut self, actions: Vec<FlowActionName>) -> Self {
        if let DomainError::Refused {
            allowed_actions, ..
        } = &mut self
        {
            *allowed_actions = actions;
        }
        self
    }

    /// The refusal's code, if this is a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            DomainError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => {
                DomainError::new(ErrorCode::NotFound, format!("{what} not found"))
            }
            StoreError::AlreadyExists(what) => {
                DomainError::new(ErrorCode::Conflict, format!("{what} already exists"))
            }
            e if e.is_unavailable() => DomainError::Unavailable(e),
            e => DomainError::Store(e),
        }
    }
}

impl From<sqlx::Error> for DomainError {
    fn from(e: sqlx::Error) -> Self {
        DomainError::from(StoreError::from(e))
    }
}
