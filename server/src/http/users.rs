//! Customer API: users and their devices. The rules are in [`crate::domain::devices`].

use super::extract::ApiPath;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tessera_protocol::api::{CreateUserRequest, DeviceList, UpdateUserRequest, User};

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth};
use crate::domain::{Ctx, devices, users};

use super::extract::parse_user_id;

/// Creates a user.
#[utoipa::path(post, path = "/v1/users", tag = "customer", request_body = CreateUserRequest,
    security(("api_key" = [])),
    responses((status = 201, body = User),
              (status = 409, description = "user_already_exists", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn create_user(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let user = devices::create_user(&state, &auth.0.id, &body).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// One user.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 200, body = User), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_user(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<User>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(devices::get_user(&state, &auth.0.id, &user_id).await?))
}

/// Changes a user's settings: the preferred language for the server's own texts (`locale`,
/// BCP 47; `null` removes it).
#[utoipa::path(patch, path = "/v1/users/{user_id}", tag = "customer",
    request_body = UpdateUserRequest,
    security(("api_key" = [])),
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 200, body = User),
              (status = 400, description = "invalid_locale", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn update_user(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateUserRequest>,
) -> Result<Json<User>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        users::update_user(&state, &auth.0.id, &user_id, &body).await?,
    ))
}

/// Removes a user: their devices are unpaired (pending requests fail), and their pairing codes,
/// OATH tokens, CIBA user code and OpenID access and refresh tokens are revoked.
#[utoipa::path(delete, path = "/v1/users/{user_id}", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 204, description = "Removed"), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn remove_user(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    devices::remove_user(&state, &auth.0.id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The user's paired devices.
#[utoipa::path(get, path = "/v1/users/{user_id}/devices", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 200, body = DeviceList), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn list_devices(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<DeviceList>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        devices::user_devices(&state, &auth.0.id, &user_id).await?,
    ))
}

/// Unpairs one of the user's devices.
#[utoipa::path(delete, path = "/v1/users/{user_id}/devices/{enrollment_id}", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user"),
           ("enrollment_id" = tessera_protocol::ids::EnrollmentId, Path, description = "The device's enrollment id")),
    responses((status = 204, description = "Unpaired"), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn remove_device(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath((user_id, enrollment_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    devices::remove_device(&state, &auth.0.id, &user_id, &enrollment_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes one of the user's devices the primary device: the one authentications go to by default.
#[utoipa::path(put, path = "/v1/users/{user_id}/devices/{enrollment_id}/primary", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user"),
           ("enrollment_id" = tessera_protocol::ids::EnrollmentId, Path, description = "The device's enrollment id")),
    responses((status = 200, body = DeviceList, description = "The user's devices after the change"),
              (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn set_primary(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath((user_id, enrollment_id)): ApiPath<(String, String)>,
) -> Result<Json<DeviceList>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let devices = devices::set_primary(&state, &auth.0.id, &user_id, &enrollment_id).await?;
    Ok(Json(devices))
}
