//! The HTTP API's error: a stable code and a safe message, answered as the JSON error body.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tessera_protocol::error::{ErrorBody, ErrorCode};

use crate::domain::DomainError;

/// An API error. The message is shown to clients: it never holds a secret or a submitted value.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub missing_methods: Vec<tessera_protocol::api::AuthenticationMethod>,
    pub allowed_actions: Vec<tessera_protocol::flows::FlowActionName>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            missing_methods: Vec::new(),
            allowed_actions: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let unavailable = self.code == ErrorCode::ServiceUnavailable;
        let mut body = ErrorBody::new(self.code, self.message);
        body.error.missing_methods = self.missing_methods;
        body.error.allowed_actions = self.allowed_actions;
        let mut response = (status, Json(body)).into_response();
        if unavailable {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// Seconds a client is asked to wait after `service_unavailable`.
pub(crate) const RETRY_AFTER_SECONDS: &str = "2";

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Refused {
                code,
                message,
                missing_methods,
                allowed_actions,
            } => ApiError {
                code,
                message,
                missing_methods,
                allowed_actions,
            },
            DomainError::Unavailable(source) => {
                tracing::error!(error = %source, cause = ?std::error::Error::source(&source), "database unavailable");
                ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    "the service is unavailable; retry shortly",
                )
            }
            DomainError::Store(source) => {
                tracing::error!(error = %source, cause = ?std::error::Error::source(&source), "storage error");
                ApiError::new(ErrorCode::InternalError, "internal error")
            }
            DomainError::Internal(what) => {
                tracing::error!(what, "internal error");
                ApiError::new(ErrorCode::InternalError, "internal error")
            }
        }
    }
}

/// Answers unknown routes.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// Answers known routes called with the wrong method.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}
