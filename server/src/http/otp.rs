//! One-time passcodes checked by the server (the rules are in [`crate::domain::otp`]): codes
//! from the user's devices (the app's TOTP, registered OATH tokens), the answer to a push
//! authentication with a passcode, and the user's OATH tokens.

use super::extract::ApiPath;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tessera_protocol::api::{
    AuthenticationStatus, OtpToken, OtpTokenList, OtpVerified, RegisterOtpToken, VerifyOtpRequest,
};

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth, parse_user_id};
use crate::domain::Ctx;
use crate::domain::otp;

/// Checks a one-time passcode from one of the user's devices (the app, or a registered OATH
/// token).
#[utoipa::path(post, path = "/v1/users/{user_id}/otp/verify", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    request_body = VerifyOtpRequest,
    responses((status = 200, body = OtpVerified),
              (status = 400, description = "otp_invalid", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "no_device", body = tessera_protocol::error::ErrorBody),
              (status = 423, description = "otp_locked", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn verify(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<VerifyOtpRequest>,
) -> Result<Json<OtpVerified>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        otp::verify(&state, &auth.0.id, user_id, &body.code).await?,
    ))
}

/// Clears the user's count of wrong passcodes (unlocks passcode sign-in).
#[utoipa::path(delete, path = "/v1/users/{user_id}/otp/failures", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 204, description = "Reset"), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn reset_failures(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    otp::reset_failures(&state, &auth.0.id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Answers a push authentication with a one-time passcode: the app's (or a registered token's)
/// when "use code" or OTP fallback is in force, or a backup code sent for it. Completes it as
/// approved with the passcode's attributes.
#[utoipa::path(post, path = "/v1/authentications/{authentication_id}/otp", tag = "customer",
    params(("authentication_id" = tessera_protocol::ids::AuthenticationId, Path, description = "The authentication")),
    request_body = VerifyOtpRequest,
    responses((status = 200, body = AuthenticationStatus),
              (status = 400, description = "otp_invalid", body = tessera_protocol::error::ErrorBody),
              (status = 403, description = "policy_denied (the policy decided for the push does not name the code's source)", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "authentication_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "otp_not_allowed, already_answered", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "authentication_expired", body = tessera_protocol::error::ErrorBody),
              (status = 423, description = "otp_locked", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn answer_authentication(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<VerifyOtpRequest>,
) -> Result<Json<AuthenticationStatus>, ApiError> {
    Ok(Json(
        otp::answer_authentication(&state, &auth.0.id, &id, &body.code).await?,
    ))
}

/// Registers an OATH token whose seed is known (desktop OTP, hardware token, YubiKey in OATH
/// mode, authenticator app). The seed is never returned.
#[utoipa::path(post, path = "/v1/users/{user_id}/otp-tokens", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    request_body = RegisterOtpToken,
    responses((status = 201, body = OtpToken),
              (status = 400, description = "invalid_request", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn register_token(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<RegisterOtpToken>,
) -> Result<(StatusCode, Json<OtpToken>), ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let token = otp::register_token(&state, &auth.0.id, &user_id, body).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// The user's OATH tokens (never their seeds).
#[utoipa::path(get, path = "/v1/users/{user_id}/otp-tokens", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 200, body = OtpTokenList), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn list_tokens(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<OtpTokenList>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(otp::list_tokens(&state, &auth.0.id, &user_id).await?))
}

/// Removes one of the user's OATH tokens.
#[utoipa::path(delete, path = "/v1/users/{user_id}/otp-tokens/{token_id}", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user"),
           ("token_id" = String, Path, description = "The token")),
    responses((status = 204, description = "Removed"), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn remove_token(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath((user_id, token_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    otp::remove_token(&state, &auth.0.id, &user_id, &token_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
