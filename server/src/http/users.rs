//! Customer API: users and their devices.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tessera_protocol::api::{CreateUserRequest, DeviceList, User};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{EnrollmentId, UserId};

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth};
use crate::domain::Ctx;
use crate::store::StoreError;
use crate::store::{enrollments, users};

const MAX_DISPLAY_NAME: usize = 256;

pub(crate) use super::extract::parse_user_id;

/// The user, or `user_not_found`.
pub(crate) async fn require_user(
    state: &Ctx,
    auth: &AppAuth,
    user_id: &UserId,
) -> Result<User, ApiError> {
    Ok(crate::domain::users::require_user(state, &auth.0.id, user_id).await?)
}

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
        Err(StoreError::AlreadyExists(_)) => Err(ApiError::new(
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
    State(state): State<Ctx>,
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
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
) -> Result<Json<DeviceList>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    let devices = crate::domain::device_verification::user_devices(&state, &auth.0.id, &user_id)
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
    State(state): State<Ctx>,
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
    State(state): State<Ctx>,
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
