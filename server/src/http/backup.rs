//! Backup channels and one-time device authentication (the rules are in
//! [`crate::domain::backup`]): the user's backup contacts, passcodes sent by SMS, voice call or
//! email for a push authentication or outside one, and their verification.

use super::extract::ApiPath;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tessera_protocol::api::{
    BackupContacts, CreateOtpChallenge, OtpChallenge, OtpChallengeVerified, SendBackupCode,
    VerifyOtpRequest,
};

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth, parse_user_id};
use crate::domain::Ctx;
use crate::domain::backup;

/// Registers (replaces) the user's backup contacts; answers them masked.
#[utoipa::path(put, path = "/v1/users/{user_id}/backup-contacts", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    request_body = BackupContacts,
    responses((status = 200, body = BackupContacts),
              (status = 400, description = "invalid_request", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn set_contacts(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<BackupContacts>,
) -> Result<Json<BackupContacts>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        backup::set_contacts(&state, &auth.0.id, &user_id, body).await?,
    ))
}

/// The user's backup contacts, masked.
#[utoipa::path(get, path = "/v1/users/{user_id}/backup-contacts", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 200, body = BackupContacts),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_contacts(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<BackupContacts>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        backup::get_contacts(&state, &auth.0.id, &user_id).await?,
    ))
}

/// Sends a one-time passcode for a push authentication through one of its backup channels, to
/// the user's registered contact. Answer it with `POST /v1/authentications/{id}/otp`.
#[utoipa::path(post, path = "/v1/authentications/{authentication_id}/backup-codes", tag = "customer",
    params(("authentication_id" = tessera_protocol::ids::AuthenticationId, Path, description = "The authentication")),
    request_body = SendBackupCode,
    responses((status = 201, body = OtpChallenge),
              (status = 403, description = "policy_denied (the policy decided for the push does not name the channel)", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "authentication_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "backup_channel_unavailable, already_answered", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "authentication_expired", body = tessera_protocol::error::ErrorBody),
              (status = 429, description = "rate_limited", body = tessera_protocol::error::ErrorBody),
              (status = 502, description = "delivery_failed", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn send_for_authentication(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SendBackupCode>,
) -> Result<(StatusCode, Json<OtpChallenge>), ApiError> {
    let sent = backup::send_for_authentication(&state, &auth.0, &id, body.channel).await?;
    Ok((StatusCode::CREATED, Json(sent)))
}

/// Sends a one-time passcode outside a push authentication: to the user's registered contact
/// (backup sign-in), or to a phone number or email address given for this one sign-in
/// (one-time device authentication).
#[utoipa::path(post, path = "/v1/users/{user_id}/otp-challenges", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    request_body = CreateOtpChallenge,
    responses((status = 201, body = OtpChallenge),
              (status = 400, description = "invalid_request", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "backup_channel_unavailable, mandatory_methods_missing", body = tessera_protocol::error::ErrorBody),
              (status = 429, description = "rate_limited", body = tessera_protocol::error::ErrorBody),
              (status = 502, description = "delivery_failed", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn create_challenge(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<CreateOtpChallenge>,
) -> Result<(StatusCode, Json<OtpChallenge>), ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let sent = backup::create_challenge(&state, &auth.0, user_id, body).await?;
    Ok((StatusCode::CREATED, Json(sent)))
}

/// Checks the code of a challenge sent with `POST /v1/users/{id}/otp-challenges`.
#[utoipa::path(post, path = "/v1/otp-challenges/{challenge_id}/verify", tag = "customer",
    params(("challenge_id" = String, Path, description = "The challenge")),
    request_body = VerifyOtpRequest,
    responses((status = 200, body = OtpChallengeVerified),
              (status = 400, description = "otp_invalid", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "otp_challenge_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 423, description = "otp_locked", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn verify_challenge(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<VerifyOtpRequest>,
) -> Result<Json<OtpChallengeVerified>, ApiError> {
    Ok(Json(
        backup::verify_challenge(&state, &auth.0.id, &id, &body.code).await?,
    ))
}
