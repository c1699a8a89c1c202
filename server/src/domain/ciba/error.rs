//! OAuth errors (RFC 6749 §5.2 and CIBA Core §13): a code and a description shown to the
//! client. The HTTP answer (status, headers, body) is `http::oidc`'s.

use crate::domain::DomainError;
use crate::store::StoreError;

/// The OAuth and CIBA error codes this provider answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OAuthCode {
    InvalidRequest,
    InvalidScope,
    ExpiredLoginHintToken,
    UnknownUserId,
    UnauthorizedClient,
    MissingUserCode,
    InvalidUserCode,
    InvalidBindingMessage,
    InvalidClient,
    AccessDenied,
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
    InvalidGrant,
    UnsupportedGrantType,
    InvalidToken,
    ServerError,
    TemporarilyUnavailable,
    UnsupportedResponseType,
    LoginRequired,
    InvalidRequestObject,
}

impl OAuthCode {
    /// The code as it goes on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthCode::InvalidRequest => "invalid_request",
            OAuthCode::InvalidScope => "invalid_scope",
            OAuthCode::ExpiredLoginHintToken => "expired_login_hint_token",
            OAuthCode::UnknownUserId => "unknown_user_id",
            OAuthCode::UnauthorizedClient => "unauthorized_client",
            OAuthCode::MissingUserCode => "missing_user_code",
            OAuthCode::InvalidUserCode => "invalid_user_code",
            OAuthCode::InvalidBindingMessage => "invalid_binding_message",
            OAuthCode::InvalidClient => "invalid_client",
            OAuthCode::AccessDenied => "access_denied",
            OAuthCode::AuthorizationPending => "authorization_pending",
            OAuthCode::SlowDown => "slow_down",
            OAuthCode::ExpiredToken => "expired_token",
            OAuthCode::InvalidGrant => "invalid_grant",
            OAuthCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthCode::InvalidToken => "invalid_token",
            OAuthCode::ServerError => "server_error",
            OAuthCode::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthCode::UnsupportedResponseType => "unsupported_response_type",
            OAuthCode::LoginRequired => "login_required",
            OAuthCode::InvalidRequestObject => "invalid_request_object",
        }
    }
}

/// An OAuth error. The description is shown to the client: no secret, no submitted value.
#[derive(Debug)]
pub(crate) struct OAuthError {
    /// The code.
    pub code: OAuthCode,
    /// What to tell the client.
    pub description: String,
    /// For `invalid_client` after HTTP Basic: answer with a `WWW-Authenticate` challenge.
    pub basic_challenge: bool,
}

impl OAuthError {
    /// An error with `code` and a safe `description`.
    pub fn new(code: OAuthCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            basic_challenge: false,
        }
    }
}

/// `invalid_request` with `description`.
pub(crate) fn invalid_request(description: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthCode::InvalidRequest, description)
}

/// `server_error`, logged with what failed.
pub(crate) fn server_error(what: &'static str) -> OAuthError {
    OAuthError::from(DomainError::Internal(what))
}

impl From<DomainError> for OAuthError {
    /// An unavailable database is `temporarily_unavailable` (503, to be retried), never a
    /// refusal of the request.
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Unavailable(source) => {
                tracing::error!(error = %source, "database unavailable");
                OAuthError::new(
                    OAuthCode::TemporarilyUnavailable,
                    "the service is unavailable; retry shortly",
                )
            }
            DomainError::Refused { message, .. } => {
                OAuthError::new(OAuthCode::InvalidRequest, message)
            }
            other => {
                tracing::error!(error = %other, "server error");
                OAuthError::new(OAuthCode::ServerError, "internal error")
            }
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        OAuthError::from(DomainError::from(e))
    }
}

impl From<sqlx::Error> for OAuthError {
    fn from(e: sqlx::Error) -> Self {
        OAuthError::from(StoreError::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_database_is_temporarily_unavailable() {
        let e = OAuthError::from(StoreError::from(sqlx::Error::PoolTimedOut));
        assert_eq!(e.code, OAuthCode::TemporarilyUnavailable);
        let e = OAuthError::from(DomainError::Internal("signing"));
        assert_eq!(e.code, OAuthCode::ServerError);
    }
}
