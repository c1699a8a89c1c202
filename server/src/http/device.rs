//! Device API: the server's keys, and calls a device signs with its possession key.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tessera_protocol::api::{
    EnrollmentState, EnrollmentStatus, ServerKeysResponse, UpdatePushRequest,
};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::time;

use super::extract::{WaitQuery, authenticate_device, same_enrollment};
use crate::domain::Ctx;
use crate::domain::authentication::MAX_WAIT_SECONDS;
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
use super::errors::ApiError;
use super::extract::parse_json;
use super::pairing::push_token_ok;
use crate::domain::device_verification;
use crate::store::enrollments::{self};

/// The server's current signing keys, plain and signed.
#[utoipa::path(get, path = "/v1/server-keys", tag = "device",
    responses((status = 200, body = ServerKeysResponse)))]
pub(crate) async fn server_keys(
    State(state): State<Ctx>,
) -> Result<Json<ServerKeysResponse>, ApiError> {
    let signed_key_set = state
        .keys
        .signed_key_set(&state.public_url, time::now())
        .map_err(|_| ApiError::new(ErrorCode::InternalError, "internal error"))?;
    Ok(Json(ServerKeysResponse {
        issuer: state.public_url.clone(),
        keys: state.keys.public_set(),
        signed_key_set,
    }))
}

/// Whether the calling device's enrollment is active, waiting for the user's primary device to
/// approve it, or rejected. `?wait=N` holds the answer while it is pending verification (at
/// most 30 seconds).
#[utoipa::path(get, path = "/v1/device/enrollments/{enrollment_id}", tag = "device",
    params(("enrollment_id" = String, Path, description = "The enrollment the device speaks for"), WaitQuery),
    responses((status = 200, body = EnrollmentStatus),
              (status = 401, description = "unknown enrollment or bad signature", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "replayed_message", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn enrollment_status(
    State(state): State<Ctx>,
    Path(enrollment_id): Path<String>,
    Query(query): Query<WaitQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<EnrollmentStatus>, ApiError> {
    let enrollment = authenticate_device(&state, &headers, &method, uri.path(), b"").await?;
    let id = same_enrollment(&enrollment, &enrollment_id)?;
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_secs(query.wait.unwrap_or(0).min(MAX_WAIT_SECONDS));
    let mut current = device_verification::settled(&state, enrollment).await?;
    while current.status == EnrollmentState::PendingVerification
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(POLL_INTERVAL).await;
        let Some(latest) = enrollments::by_id(&state.db, &id).await? else {
            break;
        };
        current = device_verification::settled(&state, latest).await?;
    }
    Ok(Json(EnrollmentStatus {
        enrollment_id: id,
        user_id: current.user_id,
        application_id: current.application_id,
        status: current.status,
    }))
}

/// The calling device unpairs itself.
#[utoipa::path(delete, path = "/v1/device/enrollments/{enrollment_id}", tag = "device",
    params(("enrollment_id" = String, Path, description = "The enrollment the device speaks for")),
    responses((status = 204, description = "Unpaired"),
              (status = 401, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn unpair(
    State(state): State<Ctx>,
    Path(enrollment_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let enrollment = authenticate_device(&state, &headers, &method, uri.path(), b"").await?;
    let id = same_enrollment(&enrollment, &enrollment_id)?;
    enrollments::delete(&state.db, &enrollment.application_id, None, &id).await?;
    tracing::info!(enrollment_id = %id, "device unpaired itself");
    Ok(StatusCode::NO_CONTENT)
}

/// The calling device registers a new push token (or another provider, or none); a stale token
/// is forgotten and pushes resume.
#[utoipa::path(put, path = "/v1/device/enrollments/{enrollment_id}/push", tag = "device",
    params(("enrollment_id" = String, Path, description = "The enrollment the device speaks for")),
    request_body = UpdatePushRequest,
    responses((status = 204, description = "Registered"),
              (status = 400, description = "invalid_request", body = tessera_protocol::error::ErrorBody),
              (status = 401, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn update_push(
    State(state): State<Ctx>,
    Path(enrollment_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let enrollment = authenticate_device(&state, &headers, &method, uri.path(), &body).await?;
    let id = same_enrollment(&enrollment, &enrollment_id)?;
    let request: UpdatePushRequest = parse_json(&body)?;
    if !push_token_ok(&request.push) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the push token is invalid",
        ));
    }
    if !enrollments::set_push(&state.db, &id, &request.push).await? {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "a valid device signature is required",
        ));
    }
    tracing::info!(enrollment_id = %id, provider = request.push.provider(), "device registered a push token");
    Ok(StatusCode::NO_CONTENT)
}
