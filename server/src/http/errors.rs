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
pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    fallback_error(&uri, StatusCode::NOT_FOUND)
}

/// Answers known routes called with the wrong method.
pub(crate) async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    fallback_error(&uri, StatusCode::METHOD_NOT_ALLOWED)
}

/// The router's own answers: the OAuth error body under `/oidc/`, the API's elsewhere.
fn fallback_error(uri: &axum::http::Uri, status: StatusCode) -> Response {
    let code = code_for_status(status);
    if uri.path().starts_with(OAUTH_PREFIX) {
        oauth_error(status, message_for(code))
    } else {
        ApiError::new(code, message_for(code)).into_response()
    }
}

/// An OAuth error body (RFC 6749 §5.2) for an answer the OpenID handlers did not write
/// themselves: `server_error` for 5xx, `invalid_request` otherwise; never cached.
fn oauth_error(status: StatusCode, description: &str) -> Response {
    let body = tessera_protocol::ciba::OAuthErrorResponse {
        error: if status.is_server_error() {
            "server_error".to_string()
        } else {
            "invalid_request".to_string()
        },
        error_description: Some(description.to_string()),
        auth_req_id: None,
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The error code a bare status stands for, when a layer below the handlers (axum's own
/// rejections, the body limit) answered without the JSON error body.
fn code_for_status(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::ServiceUnavailable,
        s if s.is_server_error() => ErrorCode::InternalError,
        _ => ErrorCode::InvalidRequest,
    }
}

/// A safe message for a code given by [`code_for_status`].
fn message_for(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unauthorized => "authentication is required",
        ErrorCode::NotFound => "no such route",
        ErrorCode::MethodNotAllowed => "method not allowed on this route",
        ErrorCode::PayloadTooLarge => "request body is too large",
        ErrorCode::UnsupportedMediaType => "unsupported content type",
        ErrorCode::RateLimited => "too many requests; retry later",
        ErrorCode::ServiceUnavailable => "the service is unavailable; retry shortly",
        ErrorCode::InternalError => "internal error",
        _ => "invalid request",
    }
}

/// The OpenID endpoints' path prefix: their errors are OAuth error bodies.
const OAUTH_PREFIX: &str = "/oidc/";

fn is_json_content(response: &Response) -> bool {
    response_mime(response)
        .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"))
}

/// Whether the answer is an HTML page meant for a person in a browser (the OpenID authorize
/// endpoint's error pages): those stay pages, the browser shows them.
fn is_html_page(response: &Response) -> bool {
    response_mime(response).is_some_and(|mime| mime == "text/html")
}

fn response_mime(response: &Response) -> Option<String> {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| mime.trim().to_ascii_lowercase())
}

/// Makes every error answer the documented JSON error body: an answer of status 400 or more
/// that is neither JSON nor an HTML page (axum's own rejections, which are `text/plain`) is
/// replaced by
/// `{"error": {"code", "message"}}` with the code its status stands for, or, on the OpenID
/// endpoints (`/oidc/…`), by the OAuth error body `{"error", "error_description"}`. The original
/// text is dropped (it may quote the request); headers that matter to the client (`Allow`,
/// `Retry-After`, `WWW-Authenticate`) are kept.
pub(crate) async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let oauth = request.uri().path().starts_with(OAUTH_PREFIX);
    let response = next.run(request).await;
    let status = response.status();
    if status.as_u16() < 400 || is_json_content(&response) || is_html_page(&response) {
        return response;
    }
    let code = code_for_status(status);
    let mut replaced = if oauth {
        oauth_error(status, message_for(code))
    } else {
        (status, Json(ErrorBody::new(code, message_for(code)))).into_response()
    };
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = response.headers().get(&name) {
            replaced.headers_mut().insert(name, value.clone());
        }
    }
    replaced
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_plain_text_error_becomes_the_json_error_body() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let app = axum::Router::new()
            .route(
                "/plain",
                axum::routing::get(|| async {
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        [(header::ALLOW, "GET")],
                        "length limit exceeded",
                    )
                }),
            )
            .route(
                "/ok",
                axum::routing::get(|| async { (StatusCode::OK, "fine") }),
            )
            .layer(axum::middleware::from_fn(json_errors));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        let r = http
            .get(format!("http://{addr}/plain"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers()["allow"], "GET");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let body: ErrorBody = r.json().await.unwrap();
        assert_eq!(body.error.code, ErrorCode::PayloadTooLarge);
        let r = http.get(format!("http://{addr}/ok")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "fine");
    }
}
