//! OAuth error responses (RFC 6749 §5.2 and CIBA Core §13): `{"error", "error_description"}`
//! with the status each code takes, never cached.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tessera_protocol::ciba::OAuthErrorResponse;

use crate::domain::DomainError;
use crate::error::ServerError;
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
}

impl OAuthCode {
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
        }
    }

    fn status(self) -> StatusCode {
        match self {
            OAuthCode::InvalidClient | OAuthCode::InvalidToken => StatusCode::UNAUTHORIZED,
            OAuthCode::AccessDenied => StatusCode::FORBIDDEN,
            OAuthCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            OAuthCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An OAuth error. The description is shown to the client: no secret, no submitted value.
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub code: OAuthCode,
    pub description: String,
    /// For `invalid_client` after HTTP Basic: answer with a `WWW-Authenticate` challenge.
    pub basic_challenge: bool,
}

impl OAuthError {
    pub fn new(code: OAuthCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            basic_challenge: false,
        }
    }
}

pub(crate) fn invalid_request(description: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthCode::InvalidRequest, description)
}

pub(crate) fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = OAuthErrorResponse {
            error: self.code.as_str().to_string(),
            error_description: Some(self.description),
            auth_req_id: None,
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        if self.code == OAuthCode::InvalidClient && self.basic_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tessera\""),
            );
        }
        if self.code == OAuthCode::InvalidToken {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        no_store(&mut response);
        response
    }
}

impl From<DomainError> for OAuthError {
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

impl From<ServerError> for OAuthError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Store(e) => OAuthError::from(e),
            other => {
                tracing::error!(error = %other, "server error");
                OAuthError::new(OAuthCode::ServerError, "internal error")
            }
        }
    }
}

impl From<sqlx::Error> for OAuthError {
    fn from(e: sqlx::Error) -> Self {
        OAuthError::from(StoreError::from(e))
    }
}
