//! One-time passcodes from the user's devices (`MOBILE_APP_OTP`): the customer checks a code the
//! user typed. Codes are TOTP from the seed each enrollment received at pairing; a drift window
//! of a step either side; every code single use (per enrollment, only a later time step than
//! the last accepted); consecutive failures lock the user's OTP checks until the customer resets
//! them.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;
use subtle::ConstantTimeEq;
use tessera_protocol::api::{OtpVerified, VerifyOtpRequest};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::otp::{DIGITS, OtpHash, PERIOD_SECONDS, hotp};
use tessera_protocol::time;

use super::AppState;
use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth};
use super::users::{parse_user_id, require_user};
use crate::db::{enrollments, otp};

/// Checks a one-time passcode from one of the user's devices.
#[utoipa::path(post, path = "/v1/users/{user_id}/otp/verify", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    request_body = VerifyOtpRequest,
    responses((status = 200, body = OtpVerified),
              (status = 400, description = "otp_invalid", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "no_device", body = tessera_protocol::error::ErrorBody),
              (status = 423, description = "otp_locked", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    auth: AppAuth,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<VerifyOtpRequest>,
) -> Result<Json<OtpVerified>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    let app = &auth.0.id;
    let max = i64::from(state.config.otp_max_failures.max(1));
    if otp::failures(&state.db, app, &user_id).await? >= max {
        return Err(ApiError::new(
            ErrorCode::OtpLocked,
            "too many wrong passcodes; ask the service to unlock passcode sign-in",
        ));
    }
    let seeds = otp::seeds_for_user(&state.db, app, &user_id).await?;
    if seeds.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NoDevice,
            "the user has no device that makes passcodes",
        ));
    }
    let code: String = body.code.chars().filter(|c| !c.is_whitespace()).collect();
    let well_formed = code.len() == DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit());
    let now_step = time::now().max(0) / i64::from(PERIOD_SECONDS);
    let drift = i64::from(state.config.otp_drift_steps);
    let mut matched = None;
    if well_formed {
        'seeds: for s in &seeds {
            for step in (now_step - drift)..=(now_step + drift) {
                let Ok(step_u) = u64::try_from(step) else {
                    continue;
                };
                let expected = hotp(&s.seed, OtpHash::Sha1, DIGITS, step_u)
                    .map_err(|_| ApiError::new(ErrorCode::InternalError, "internal error"))?;
                if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
                    matched = Some((s.enrollment_id.clone(), step, s.last_step));
                    break 'seeds;
                }
            }
        }
    }
    let accepted = match &matched {
        Some((enrollment, step, last)) if step > last => {
            otp::accept_step(&state.db, enrollment, *step).await?
        }
        _ => false,
    };
    if !accepted {
        let failures = otp::record_failure(&state.db, app, &user_id).await?;
        tracing::info!(failures, "one-time passcode refused");
        let message = if matched.is_some() {
            "this passcode was already used; wait for the next one"
        } else {
            "the passcode is wrong or expired"
        };
        return Err(if failures >= max {
            ApiError::new(
                ErrorCode::OtpLocked,
                "too many wrong passcodes; ask the service to unlock passcode sign-in",
            )
        } else {
            ApiError::new(ErrorCode::OtpInvalid, message)
        });
    }
    otp::reset_failures(&state.db, app, &user_id).await?;
    let (enrollment_id, _, _) =
        matched.ok_or_else(|| ApiError::new(ErrorCode::InternalError, "internal error"))?;
    let mut attributes = BTreeMap::new();
    let p = "pingid.authentication.";
    attributes.insert(format!("{p}type"), json!("MOBILE_APP_OTP"));
    if let Some(device) = enrollments::by_id(&state.db, &enrollment_id).await? {
        let d = format!("{p}authenticating.device.");
        attributes.insert(format!("{d}id"), json!(device.device_id));
        attributes.insert(format!("{d}model"), json!(device.device_info.model));
        attributes.insert(
            format!("{d}os.version"),
            json!(device.device_info.os_version),
        );
        attributes.insert(
            format!("{d}app.version"),
            json!(device.device_info.app_version),
        );
    }
    attributes.insert(format!("{p}amr"), json!(["otp"]));
    tracing::info!(enrollment_id = %enrollment_id, "one-time passcode accepted");
    Ok(Json(OtpVerified {
        user_id,
        enrollment_id,
        attributes,
    }))
}

/// Clears the user's count of wrong passcodes (unlocks passcode sign-in).
#[utoipa::path(delete, path = "/v1/users/{user_id}/otp/failures", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    responses((status = 204, description = "Reset"), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn reset_failures(
    State(state): State<AppState>,
    auth: AppAuth,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    otp::reset_failures(&state.db, &auth.0.id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
