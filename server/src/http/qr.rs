//! QR login: the customer creates a session, a web page shows its code (renewed every minute
//! while nobody has scanned it), one trusted device claims it and one of that device's users
//! answers with a signed response bound to the session, its nonce and the context shown.
//! By application policy an approval is completed by a follow-up: a silent verification of the
//! device, or a push approval to the user.
//!
//! Three kinds of caller: the customer (API key) creates sessions and reads results; the device
//! (its enrollment keys) claims and answers; the browser (the session's browser token, sent in
//! an `Authorization: TesseraBrowser` header) reads progress and renews the code, nothing else.

use super::extract::{ApiPath, ApiQuery};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tessera_protocol::api::{
    ClaimQrSession, CreateQrSession, QrAnswerRecorded, QrBrowserStatus, QrSessionClaimed,
    QrSessionCreated, QrSessionStatus, SubmitQrResponse,
};

use super::errors::ApiError;
use super::extract::{
    ApiJson, ApiKey, ClientAddr, OptionalJson, device_call, parse_json, parsed_or_refused,
};
use crate::domain::Ctx;
use crate::domain::authentication::MAX_WAIT_SECONDS;
use crate::domain::qr::{self, CodeImage};

const BROWSER_SCHEME: &str = "TesseraBrowser";

/// Creates a QR login session.
#[utoipa::path(post, path = "/v1/qr-sessions", tag = "customer",
    request_body(content = CreateQrSession, description = "Optional"),
    responses((status = 201, body = QrSessionCreated),
              (status = 400, body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn create_session(
    State(state): State<Ctx>,
    ApiKey(key): ApiKey,
    body: Result<OptionalJson<CreateQrSession>, ApiError>,
) -> Result<(StatusCode, Json<QrSessionCreated>), ApiError> {
    let OptionalJson(body) = parsed_or_refused(&state, &key, body).await?;
    let created = qr::create_session_by_key(&state, &key, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `?wait=SECONDS` (and, for the browser, `&seen=VERSION`).
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct QrWaitQuery {
    /// Seconds to wait for a change (at most 30).
    #[serde(default)]
    #[param(minimum = 0, maximum = 30)]
    pub wait: Option<u64>,
    /// The version the caller already shows; the answer waits for another.
    #[serde(default)]
    pub seen: Option<i64>,
}

impl QrWaitQuery {
    /// How long to wait, at most [`MAX_WAIT_SECONDS`].
    fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.wait.unwrap_or(0).min(MAX_WAIT_SECONDS))
    }
}

/// A QR session's state and, once approved, the user, the attributes and the signed answer.
/// `?wait=N` holds the answer until the state changes (at most 30 seconds).
#[utoipa::path(get, path = "/v1/qr-sessions/{session_id}", tag = "customer",
    params(("session_id" = tessera_protocol::ids::QrSessionId, Path, description = "The session"), QrWaitQuery),
    responses((status = 200, body = QrSessionStatus), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_session(
    State(state): State<Ctx>,
    ApiKey(key): ApiKey,
    ApiPath(id): ApiPath<String>,
    query: Result<ApiQuery<QrWaitQuery>, ApiError>,
) -> Result<Json<QrSessionStatus>, ApiError> {
    let ApiQuery(query) = parsed_or_refused(&state, &key, query).await?;
    Ok(Json(
        qr::status_by_key(&state, &key, &id, query.duration()).await?,
    ))
}

fn image_response(content_type: &'static str, body: Vec<u8>) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-store")],
        body,
    )
        .into_response()
}

/// The session's current code as a PNG image.
#[utoipa::path(get, path = "/v1/qr-sessions/{session_id}/qr.png", tag = "customer",
    params(("session_id" = tessera_protocol::ids::QrSessionId, Path, description = "The session")),
    responses((status = 200, content_type = "image/png", description = "The QR code"),
              (status = 409, body = tessera_protocol::error::ErrorBody),
              (status = 410, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn qr_png(
    State(state): State<Ctx>,
    ApiKey(key): ApiKey,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let png = qr::code_image_by_key(&state, &key, &id, CodeImage::Png).await?;
    Ok(image_response("image/png", png))
}

/// The session's current code as an SVG image.
#[utoipa::path(get, path = "/v1/qr-sessions/{session_id}/qr.svg", tag = "customer",
    params(("session_id" = tessera_protocol::ids::QrSessionId, Path, description = "The session")),
    responses((status = 200, content_type = "image/svg+xml", description = "The QR code"),
              (status = 409, body = tessera_protocol::error::ErrorBody),
              (status = 410, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn qr_svg(
    State(state): State<Ctx>,
    ApiKey(key): ApiKey,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let svg = qr::code_image_by_key(&state, &key, &id, CodeImage::Svg).await?;
    Ok(image_response("image/svg+xml", svg))
}

/// The device claims the session its scanned code names (device-signed with any of its
/// enrollments on this server), listing its enrollments; it gets the signed context to show.
#[utoipa::path(post, path = "/v1/device/qr-sessions/claim", tag = "device",
    request_body = ClaimQrSession,
    responses((status = 200, body = QrSessionClaimed),
              (status = 401, body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "qr_session_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "qr_already_scanned, no_eligible_user", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "qr_session_expired", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn claim(
    State(state): State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<QrSessionClaimed>, ApiError> {
    let call = device_call(&headers, &method, uri.path(), &body);
    // A body that does not parse is refused once the call is authenticated, as before.
    let request = parse_json::<ClaimQrSession>(&body)
        .map_err(|e| crate::domain::DomainError::new(e.code, e.message));
    Ok(Json(qr::claim_signed(&state, call, request).await?))
}

/// The device answers a QR session with a response signed by the chosen user's enrollment.
#[utoipa::path(post, operation_id = "submit_qr_response",
    path = "/v1/device/qr-sessions/{session_id}/response", tag = "device",
    params(("session_id" = tessera_protocol::ids::QrSessionId, Path, description = "The session answered")),
    request_body = SubmitQrResponse,
    responses((status = 200, body = QrAnswerRecorded),
              (status = 400, description = "invalid_signature, response_mismatch, stale_message", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "already_answered", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "qr_session_expired", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn submit_response(
    State(state): State<Ctx>,
    ClientAddr(client): ClientAddr,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SubmitQrResponse>,
) -> Result<Json<QrAnswerRecorded>, ApiError> {
    Ok(Json(
        qr::answer(&state, &id, &body.response, &client).await?,
    ))
}

/// The browser token of an `Authorization: TesseraBrowser <token>` header.
fn browser_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(BROWSER_SCHEME))
        .and_then(|v| v.strip_prefix(' '))
}

fn no_store(status: QrBrowserStatus) -> Response {
    ([(CACHE_CONTROL, "no-store")], Json(status)).into_response()
}

/// The login page's view of its session (`Authorization: TesseraBrowser <browser token>`);
/// `?wait=N&seen=V` holds the answer while the version is still V (at most 30 seconds).
#[utoipa::path(get, path = "/v1/qr-browser", tag = "browser",
    params(QrWaitQuery),
    responses((status = 200, body = QrBrowserStatus), (status = 401, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn browser_get(
    State(state): State<Ctx>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<QrWaitQuery>,
) -> Result<Response, ApiError> {
    let status = qr::browser_status(
        &state,
        browser_token(&headers),
        query.duration(),
        query.seen,
    )
    .await?;
    Ok(no_store(status))
}

/// The login page renews its code before it expires (only while nobody has scanned it); the
/// old code stops working.
#[utoipa::path(post, path = "/v1/qr-browser/renew", tag = "browser",
    responses((status = 200, body = QrBrowserStatus),
              (status = 401, body = tessera_protocol::error::ErrorBody),
              (status = 409, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn browser_renew(
    State(state): State<Ctx>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Ok(no_store(
        qr::browser_renew(&state, browser_token(&headers)).await?,
    ))
}
