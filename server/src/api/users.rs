//! Customer API: users and their devices.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tessera_protocol::api::{CreateUserRequest, DeviceList, User};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{EnrollmentId, UserId};

use super::AppState;
use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth};
use crate::db::{enrollments, users};
use crate::error::ServerError;

const MAX_DISPLAY_NAME: usize = 256;

pub(crate) fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "invalid user id"))
}

/// The user, or `user_not_found`.
pub(crate) async fn require_user(
    state: &AppState,
    auth: &AppAuth,
    user_id: &UserId,
) -> Result<User, ApiError> {
    users::get(&state.db, &auth.0.id, user_id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::UserNotFound, "no such user in this application"))
}

/// Creates a user.
#[utoipa::path(post, path = "/v1/users", tag = "customer", request_body = CreateUserRequest,
    security(("api_key" = [])),
    responses((status = 201, body = User),
              (status = 409, description = "user_already_exists", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    auth: AppAuth,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    if body
        .display_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_DISPLAY_NAME || n.chars().any(char::is_control))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "invalid display name",
        ));
    }
    let now = tessera_protocol::time::now();
    match users::insert(
        &state.db,
        &auth.0.id,
        &body.user_id,
        body.display_name.as_deref(),
        now,
    )
    .await
    {
        Ok(user) => Ok((StatusCode::CREATED, Json(user))),
        Err(ServerError::AlreadyExists(_)) => Err(ApiError::new(
            ErrorCode::UserAlreadyExists,
            "a user with this id already exists",
        )),
        Err(e) => Err(e.into()),
    }
}

/// One user.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    responses((status = 200, body = User), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    auth: AppAuth,
    Path(user_id): Path<String>,
) -> Result<Json<User>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(require_user(&state, &auth, &user_id).await?))
}

/// The user's paired devices.
#[utoipa::path(get, path = "/v1/users/{user_id}/devices", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    responses((status = 200, body = DeviceList), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn list_devices(
    State(state): State<AppState>,
    auth: AppAuth,
    Path(user_id): Path<String>,
) -> Result<Json<DeviceList>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    let devices = super::device_verification::user_devices(&state, &auth.0.id, &user_id)
        .await?
        .iter()
        .map(enrollments::Enrollment::record)
        .collect();
    Ok(Json(DeviceList { devices }))
}

/// Unpairs one of the user's devices.
#[utoipa::path(delete, path = "/v1/users/{user_id}/devices/{enrollment_id}", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user"),
           ("enrollment_id" = String, Path, description = "The device's enrollment id")),
    responses((status = 204, description = "Unpaired"), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn remove_device(
    State(state): State<AppState>,
    auth: AppAuth,
    Path((user_id, enrollment_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let not_found = || ApiError::new(ErrorCode::DeviceNotFound, "no such device for this user");
    let enrollment_id: EnrollmentId = enrollment_id.parse().map_err(|_| not_found())?;
    if enrollments::delete(&state.db, &auth.0.id, Some(&user_id), &enrollment_id).await? {
        tracing::info!(enrollment_id = %enrollment_id, "device unpaired by the customer");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

/// Makes one of the user's devices the primary device: the one authentications go to by default.
#[utoipa::path(put, path = "/v1/users/{user_id}/devices/{enrollment_id}/primary", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user"),
           ("enrollment_id" = String, Path, description = "The device's enrollment id")),
    responses((status = 200, body = DeviceList, description = "The user's devices after the change"),
              (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn set_primary(
    State(state): State<AppState>,
    auth: AppAuth,
    Path((user_id, enrollment_id)): Path<(String, String)>,
) -> Result<Json<DeviceList>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let not_found = || ApiError::new(ErrorCode::DeviceNotFound, "no such device for this user");
    let enrollment_id: EnrollmentId = enrollment_id.parse().map_err(|_| not_found())?;
    if !enrollments::set_primary(&state.db, &auth.0.id, &user_id, &enrollment_id).await? {
        return Err(not_found());
    }
    let devices = enrollments::list_for_user(&state.db, &auth.0.id, &user_id)
        .await?
        .iter()
        .map(enrollments::Enrollment::record)
        .collect();
    Ok(Json(DeviceList { devices }))
}
