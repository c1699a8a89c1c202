//! Authentications: the customer asks a user's device; the device pulls its pending requests and
//! answers with a signed response bound to exactly what it was shown.

use super::extract::{ApiPath, ApiQuery};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tessera_protocol::api::{
    AuthenticationStatus, CreateAuthenticationRequest, PendingRequests, ResponseRecorded,
    SubmitResponse,
};

use super::errors::ApiError;
use super::extract::{
    ApiJson, ApiKey, ClientAddr, WaitQuery, authenticate_device, parse_user_id, parsed_or_refused,
    same_enrollment,
};
use crate::domain::{Ctx, authentication};

/// Asks a user's device.
#[utoipa::path(post, path = "/v1/users/{user_id}/authentications", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    request_body = CreateAuthenticationRequest,
    responses((status = 201, body = AuthenticationStatus),
              (status = 404, description = "user_not_found, device_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "no_device", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn create_authentication(
    State(ctx): State<Ctx>,
    ApiKey(key): ApiKey,
    ApiPath(user_id): ApiPath<String>,
    body: Result<ApiJson<CreateAuthenticationRequest>, ApiError>,
) -> Result<(StatusCode, Json<AuthenticationStatus>), ApiError> {
    // The key is checked beside the request's first reads (`api_keys`); a bad body or user id
    // is answered only once the key is known good, as every customer call answers 401 first.
    let parsed = body.and_then(|ApiJson(body)| Ok((parse_user_id(&user_id)?, body)));
    let (user_id, body) = parsed_or_refused(&ctx, &key, parsed).await?;
    let status = authentication::create_by_key(&ctx, &key, &user_id, body).await?;
    Ok((StatusCode::CREATED, Json(status)))
}

/// An authentication's state; `?wait=N` holds the answer until it changes from pending (or N
/// seconds pass, at most 30).
#[utoipa::path(get, path = "/v1/authentications/{authentication_id}", tag = "customer",
    params(("authentication_id" = tessera_protocol::ids::AuthenticationId, Path, description = "The authentication"), WaitQuery),
    responses((status = 200, body = AuthenticationStatus), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_authentication(
    State(ctx): State<Ctx>,
    ApiKey(key): ApiKey,
    ApiPath(id): ApiPath<String>,
    query: Result<ApiQuery<WaitQuery>, ApiError>,
) -> Result<Json<AuthenticationStatus>, ApiError> {
    // The key is checked in the read itself (`api_keys`); a bad query is answered only once
    // the key is known good, as every customer call answers 401 before 400.
    let ApiQuery(query) = parsed_or_refused(&ctx, &key, query).await?;
    let status = authentication::status_by_key(&ctx, &key, &id, query.duration()).await?;
    Ok(Json(status))
}

/// One pending request of the calling device, by id (device-signed; for a tapped
/// notification): the same signed request a pull returns, as a one-element list.
#[utoipa::path(get, path = "/v1/device/enrollments/{enrollment_id}/requests/{authentication_id}", tag = "device",
    params(("enrollment_id" = tessera_protocol::ids::EnrollmentId, Path, description = "The enrollment the device speaks for"),
           ("authentication_id" = tessera_protocol::ids::AuthenticationId, Path, description = "The request")),
    responses((status = 200, body = PendingRequests),
              (status = 401, body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "authentication_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "already_answered", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "authentication_expired", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn pending_request(
    State(ctx): State<Ctx>,
    ApiPath((enrollment_id, authentication_id)): ApiPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<PendingRequests>, ApiError> {
    let enrollment = authenticate_device(&ctx, &headers, &method, uri.path(), b"").await?;
    let enrollment_id = same_enrollment(&enrollment, &enrollment_id)?;
    let pending = authentication::pending_request(&ctx, &enrollment_id, &authentication_id).await?;
    Ok(Json(pending))
}

/// The calling device's pending requests (device-signed); `?wait=N` holds the answer until
/// there is one (or N seconds pass, at most 30).
#[utoipa::path(get, path = "/v1/device/enrollments/{enrollment_id}/requests", tag = "device",
    params(("enrollment_id" = tessera_protocol::ids::EnrollmentId, Path, description = "The enrollment the device speaks for"), WaitQuery),
    responses((status = 200, body = PendingRequests), (status = 401, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn pending_requests(
    State(ctx): State<Ctx>,
    ApiPath(enrollment_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<PendingRequests>, ApiError> {
    let call = super::extract::device_call(&headers, &method, uri.path(), b"");
    let pending = authentication::pull(&ctx, call, &enrollment_id, query.duration()).await?;
    Ok(Json(pending))
}

/// The device answers an authentication with a signed response.
#[utoipa::path(post, path = "/v1/device/authentications/{authentication_id}/response", tag = "device",
    params(("authentication_id" = tessera_protocol::ids::AuthenticationId, Path, description = "The authentication answered")),
    request_body = SubmitResponse,
    responses((status = 200, body = ResponseRecorded),
              (status = 400, description = "invalid_signature, response_mismatch, stale_message", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "already_answered", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "authentication_expired", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn submit_response(
    State(ctx): State<Ctx>,
    ClientAddr(client): ClientAddr,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SubmitResponse>,
) -> Result<Json<ResponseRecorded>, ApiError> {
    let recorded = authentication::answer(&ctx, &id, &body.response, &client).await?;
    Ok(Json(recorded))
}
