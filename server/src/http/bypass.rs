//! Bypass and recovery codes (the rules are in [`crate::domain::bypass`]): a user's
//! time-limited bypass, their recovery codes, and a pending authentication completed with one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tessera_protocol::api::AuthenticationStatus;
use tessera_protocol::bypass::{
    BypassStatus, RecoveryCodesIssued, RecoveryCodesStatus, SetBypassRequest, UseRecoveryCode,
};

use super::errors::ApiError;
use super::extract::{ApiJson, ApiPath, AppAuth, parse_user_id};
use crate::domain::Ctx;
use crate::domain::bypass;

/// Grants (or replaces) the user's bypass: until it ends, the user's push and transaction
/// authentications, flows and CIBA requests complete without a device, with type `BYPASS`.
#[utoipa::path(put, path = "/v1/users/{user_id}/bypass", tag = "customer",
    operation_id = "set_user_bypass",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    request_body = SetBypassRequest,
    responses((status = 200, body = BypassStatus),
              (status = 400, description = "invalid_request (no reason, too long, in the past)", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn set_bypass(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<SetBypassRequest>,
) -> Result<Json<BypassStatus>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        bypass::grant(&state, &auth.0.id, &user_id, &body).await?,
    ))
}

/// The user's bypass as it stands now.
#[utoipa::path(get, path = "/v1/users/{user_id}/bypass", tag = "customer",
    operation_id = "get_user_bypass",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 200, body = BypassStatus),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_bypass(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<BypassStatus>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(bypass::status(&state, &auth.0.id, &user_id).await?))
}

/// Ends the user's bypass now.
#[utoipa::path(delete, path = "/v1/users/{user_id}/bypass", tag = "customer",
    operation_id = "clear_user_bypass",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 200, body = BypassStatus),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn clear_bypass(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<BypassStatus>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(bypass::clear(&state, &auth.0.id, &user_id).await?))
}

/// Issues ten new single-use recovery codes, shown this once; the user's earlier codes stop
/// working.
#[utoipa::path(post, path = "/v1/users/{user_id}/recovery-codes", tag = "customer",
    operation_id = "issue_recovery_codes",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 201, body = RecoveryCodesIssued),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn issue_recovery_codes(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<(StatusCode, Json<RecoveryCodesIssued>), ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let issued = bypass::issue_codes(&state, &auth.0.id, &user_id).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// How many unused recovery codes the user has (never the codes).
#[utoipa::path(get, path = "/v1/users/{user_id}/recovery-codes", tag = "customer",
    operation_id = "recovery_codes_status",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 200, body = RecoveryCodesStatus),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn recovery_codes_status(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<RecoveryCodesStatus>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        bypass::codes_status(&state, &auth.0.id, &user_id).await?,
    ))
}

/// Revokes all of the user's recovery codes.
#[utoipa::path(delete, path = "/v1/users/{user_id}/recovery-codes", tag = "customer",
    operation_id = "revoke_recovery_codes",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 200, body = RecoveryCodesStatus),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn revoke_recovery_codes(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<RecoveryCodesStatus>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        bypass::revoke_codes(&state, &auth.0.id, &user_id).await?,
    ))
}

/// Completes a pending push or transaction with one of its user's recovery codes (type
/// `RECOVERY_CODE`); the code is spent with the approval. A silent verification or a CIBA
/// request takes no recovery code.
#[utoipa::path(post, path = "/v1/authentications/{authentication_id}/recovery-code", tag = "customer",
    operation_id = "answer_with_recovery_code",
    params(("authentication_id" = tessera_protocol::ids::AuthenticationId, Path, description = "The authentication")),
    request_body = UseRecoveryCode,
    responses((status = 200, body = AuthenticationStatus),
              (status = 400, description = "otp_invalid", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "authentication_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "already_answered, or otp_not_allowed (a silent verification or a CIBA request)", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "authentication_expired", body = tessera_protocol::error::ErrorBody),
              (status = 423, description = "otp_locked", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn answer_with_recovery_code(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UseRecoveryCode>,
) -> Result<Json<AuthenticationStatus>, ApiError> {
    Ok(Json(
        bypass::answer_authentication(&state, &auth.0.id, &id, &body.code).await?,
    ))
}
