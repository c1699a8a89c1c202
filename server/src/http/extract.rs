//! Request extractors: JSON bodies with typed errors, API-key authentication, the client address.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tessera_protocol::error::ErrorCode;

use super::errors::ApiError;
use crate::domain::Ctx;
use crate::domain::applications::{self, Application};

/// A JSON body: `application/json` required (415), size-limited (413), syntax errors are
/// `malformed_json`, shape errors `invalid_request`.
pub(crate) struct ApiJson<T>(pub T);

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
        } else {
            ApiError::new(ErrorCode::InvalidRequest, "request body could not be read")
        }
    })
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::new(ErrorCode::MalformedJson, "request body is not valid JSON")
            }
            Category::Data => {
                // serde names the field and the expectation, never the submitted value.
                let reason = e.to_string();
                let reason = reason
                    .split(" at line")
                    .next()
                    .unwrap_or("invalid body")
                    .to_string();
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("invalid request: {reason}"),
                )
            }
        }
    })
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the body must be application/json",
            ));
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON body that may be absent (an empty body reads as `T::default()`).
pub(crate) struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(&req);
        let has_type = req.headers().contains_key(CONTENT_TYPE);
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                if has_type {
                    "the body must be application/json"
                } else {
                    "a body needs Content-Type: application/json"
                },
            ));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// The application an API key authenticates (`Authorization: Bearer <key>`).
pub(crate) struct AppAuth(pub Application);

impl<S> FromRequestParts<S> for AppAuth
where
    S: Send + Sync,
    Ctx: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = Ctx::from_ref(state);
        let unauthorized = || ApiError::new(ErrorCode::Unauthorized, "a valid API key is required");
        let key = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or_else(unauthorized)?;
        match applications::by_api_key(&state, key).await? {
            Some(app) => Ok(AppAuth(app)),
            None => Err(unauthorized()),
        }
    }
}

/// The client's address, for the pairing throttle.
pub(crate) struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        Ok(ClientAddr(addr))
    }
}

/// `?wait=SECONDS` for long-polls.
#[derive(Debug, serde::Deserialize, Default, utoipa::IntoParams)]
pub(crate) struct WaitQuery {
    /// Seconds to wait for a change (at most 30).
    #[serde(default)]
    pub wait: Option<u64>,
}

impl WaitQuery {
    /// How long to wait, at most [`MAX_WAIT_SECONDS`](crate::domain::authentication::MAX_WAIT_SECONDS).
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.wait
                .unwrap_or(0)
                .min(crate::domain::authentication::MAX_WAIT_SECONDS),
        )
    }
}

/// Authenticates a device-signed call (see [`crate::domain::device_auth::authenticate`]).
pub(crate) async fn authenticate_device(
    ctx: &Ctx,
    headers: &axum::http::HeaderMap,
    method: &axum::http::Method,
    path: &str,
    body: &[u8],
) -> Result<crate::domain::Enrollment, ApiError> {
    let call = crate::domain::device_auth::DeviceCall {
        authorization: headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
        method: method.as_str(),
        path,
        body,
    };
    Ok(crate::domain::device_auth::authenticate(ctx, call).await?)
}

/// The enrollment a device-signed call names in its path: the signing one, or `unauthorized`.
pub(crate) fn same_enrollment(
    enrollment: &crate::domain::Enrollment,
    raw: &str,
) -> Result<tessera_protocol::ids::EnrollmentId, ApiError> {
    match raw.parse::<tessera_protocol::ids::EnrollmentId>() {
        Ok(id) if id == enrollment.enrollment_id => Ok(id),
        _ => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "a valid device signature is required",
        )),
    }
}

/// A user id from a path.
pub(crate) fn parse_user_id(raw: &str) -> Result<tessera_protocol::ids::UserId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "invalid user id"))
}
