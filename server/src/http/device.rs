//! Device API: the server's keys, and calls a device signs with its possession key. The rules
//! are in [`crate::domain::devices`].

use super::extract::{ApiPath, ApiQuery};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tessera_protocol::api::{EnrollmentStatus, ServerKeysResponse, UpdatePushRequest};

use super::errors::ApiError;
use super::extract::{WaitQuery, authenticate_device, parse_json, same_enrollment};
use crate::domain::{Ctx, devices};

/// The server's current signing keys, plain and signed.
#[utoipa::path(get, path = "/v1/server-keys", tag = "device",
    responses((status = 200, body = ServerKeysResponse)))]
pub(crate) async fn server_keys(
    State(state): State<Ctx>,
) -> Result<Json<ServerKeysResponse>, ApiError> {
    Ok(Json(devices::server_keys(&state)?))
}

/// Whether the calling device's enrollment is active, waiting for the user's primary device to
/// approve it, or rejected. `?wait=N` holds the answer while it is pending verification (at
/// most 30 seconds).
#[utoipa::path(get, path = "/v1/device/enrollments/{enrollment_id}", tag = "device",
    params(("enrollment_id" = tessera_protocol::ids::EnrollmentId, Path, description = "The enrollment the device speaks for"), WaitQuery),
    responses((status = 200, body = EnrollmentStatus),
              (status = 401, description = "unknown enrollment or bad signature", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "replayed_message", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn enrollment_status(
    State(state): State<Ctx>,
    ApiPath(enrollment_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<EnrollmentStatus>, ApiError> {
    let enrollment = authenticate_device(&state, &headers, &method, uri.path(), b"").await?;
    same_enrollment(&enrollment, &enrollment_id)?;
    let status = devices::enrollment_status(&state, enrollment, query.duration()).await?;
    Ok(Json(status))
}

/// The calling device unpairs itself.
#[utoipa::path(delete, path = "/v1/device/enrollments/{enrollment_id}", tag = "device",
    params(("enrollment_id" = tessera_protocol::ids::EnrollmentId, Path, description = "The enrollment the device speaks for")),
    responses((status = 204, description = "Unpaired"),
              (status = 401, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn unpair(
    State(state): State<Ctx>,
    ApiPath(enrollment_id): ApiPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let enrollment = authenticate_device(&state, &headers, &method, uri.path(), b"").await?;
    same_enrollment(&enrollment, &enrollment_id)?;
    devices::unpair(&state, &enrollment).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The calling device registers a new push token (or another provider, or none); a stale token
/// is forgotten and pushes resume.
#[utoipa::path(put, path = "/v1/device/enrollments/{enrollment_id}/push", tag = "device",
    params(("enrollment_id" = tessera_protocol::ids::EnrollmentId, Path, description = "The enrollment the device speaks for")),
    request_body = UpdatePushRequest,
    responses((status = 204, description = "Registered"),
              (status = 400, description = "invalid_request", body = tessera_protocol::error::ErrorBody),
              (status = 401, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn update_push(
    State(state): State<Ctx>,
    ApiPath(enrollment_id): ApiPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let enrollment = authenticate_device(&state, &headers, &method, uri.path(), &body).await?;
    let id = same_enrollment(&enrollment, &enrollment_id)?;
    let request: UpdatePushRequest = parse_json(&body)?;
    devices::update_push(&state, &id, &request.push).await?;
    Ok(StatusCode::NO_CONTENT)
}
