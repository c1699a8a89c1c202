//! The HTTP API's error: a stable code and a safe message, answered as the JSON error body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tessera_protocol::error::{ErrorBody, ErrorCode};

use crate::error::ServerError;

/// An API error. The message is shown to clients: it never holds a secret or a submitted value.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub missing_methods: Vec<tessera_protocol::api::AuthenticationMethod>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            missing_methods: Vec::new(),
        }
    }

    /// Adds the methods a `mandatory_methods_missing` error lists.
    pub fn with_missing_methods(
        mut self,
        methods: Vec<tessera_protocol::api::AuthenticationMethod>,
    ) -> Self {
        self.missing_methods = methods;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = ErrorBody::new(self.code, self.message);
        body.error.missing_methods = self.missing_methods;
        (status, Json(body)).into_response()
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Database(ref reason) => {
                tracing::error!(%reason, "database error");
                if reason.contains("pool timed out") || reason.contains("connection") {
                    ApiError::new(ErrorCode::ServiceUnavailable, "the database is unavailable")
                } else {
                    ApiError::new(ErrorCode::InternalError, "internal error")
                }
            }
            ServerError::NotFound(what) => {
                ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
            }
            ServerError::AlreadyExists(what) => {
                ApiError::new(ErrorCode::Conflict, format!("{what} already exists"))
            }
            ServerError::InvalidInput(reason) => ApiError::new(ErrorCode::InvalidRequest, reason),
            other => {
                tracing::error!(error = %other, "server error");
                ApiError::new(ErrorCode::InternalError, "internal error")
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(ServerError::from(e))
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
