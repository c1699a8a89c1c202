//! One-time passcodes checked by the server.
//!
//! - **From the user's devices**: `MOBILE_APP_OTP` (TOTP from the seed each enrollment received
//!   at pairing) and OATH tokens registered with a known seed (`DESKTOP_OTP`, `OATH_TOKEN`,
//!   `YUBIKEY` in OATH mode, `AUTHENTICATOR_APP`): TOTP with a drift window of a step either
//!   side, every code single use (only a later time step than the last accepted); HOTP with a
//!   look-ahead window whose match resynchronises the counter.
//! - **For a push authentication** (`POST /v1/authentications/{id}/otp`): the app's code when
//!   the authentication has "use code" or OTP fallback in force, or a backup code sent for it.
//!
//! Consecutive failures, wherever they happen, lock the user's passcode checks until the
//! customer resets them. Seeds are never returned or logged.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rand::RngCore;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tessera_protocol::api::{
    AuthenticationStatus, OtpToken, OtpTokenList, OtpVerified, RegisterOtpToken, VerifyOtpRequest,
};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};
use tessera_protocol::otp::{DIGITS, OtpHash, PERIOD_SECONDS, decode_base32, hotp};
use tessera_protocol::time;

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth};
use super::users::{parse_user_id, require_user};
use crate::domain::Ctx;
use crate::store::otp::{self, OathToken};
use crate::store::{authentications, enrollments, otp_challenges};

fn internal() -> ApiError {
    ApiError::new(ErrorCode::InternalError, "internal error")
}

pub(crate) fn locked() -> ApiError {
    ApiError::new(
        ErrorCode::OtpLocked,
        "too many wrong passcodes; ask the service to unlock passcode sign-in",
    )
}

/// The code as typed, without spaces.
pub(crate) fn normalize(code: &str) -> String {
    code.chars().filter(|c| !c.is_whitespace()).collect()
}

fn well_formed(code: &str, digits: u32) -> bool {
    code.len() == digits as usize && code.bytes().all(|b| b.is_ascii_digit())
}

/// Refuses with `otp_locked` if the user's passcode checks are locked.
pub(crate) async fn check_not_locked(
    state: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<(), ApiError> {
    let max = i64::from(state.config.otp_max_failures.max(1));
    if otp::failures(&state.db, app, user).await? >= max {
        return Err(locked());
    }
    Ok(())
}

/// Counts a wrong passcode: `otp_invalid` with `message`, or `otp_locked` once the count
/// reaches the limit.
pub(crate) async fn refuse(
    state: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    message: &str,
) -> ApiError {
    let max = i64::from(state.config.otp_max_failures.max(1));
    match otp::record_failure(&state.db, app, user).await {
        Ok(failures) => {
            tracing::info!(failures, "one-time passcode refused");
            if failures >= max {
                locked()
            } else {
                ApiError::new(ErrorCode::OtpInvalid, message)
            }
        }
        Err(e) => e.into(),
    }
}

/// What produced an accepted device passcode.
pub(crate) enum DeviceSource {
    /// An enrollment's provisioned seed.
    Enrollment(EnrollmentId),
    /// A registered OATH token.
    Token {
        /// Its id.
        token_id: String,
        /// Its kind.
        kind: tessera_protocol::api::OtpTokenKind,
    },
}

/// How checking a code against the user's devices went.
pub(crate) enum DeviceMatch {
    /// Accepted (and used up).
    Accepted(DeviceSource),
    /// It was right once, but is already used.
    Replayed,
    /// It matches nothing.
    NoMatch,
    /// The user has no device that makes passcodes.
    NoSources,
}

fn matches(expected: &str, code: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(code.as_bytes()))
}

/// Checks `code` against the user's enrollment seeds and OATH tokens; an accepted code's time
/// step or counter is used up in the same step (one conditional update each).
pub(crate) async fn match_device_code(
    state: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    code: &str,
) -> Result<DeviceMatch, ApiError> {
    let seeds = otp::seeds_for_user(&state.db, app, user).await?;
    let tokens = otp::tokens_for_user(&state.db, app, user).await?;
    if seeds.is_empty() && tokens.is_empty() {
        return Ok(DeviceMatch::NoSources);
    }
    let now = time::now().max(0);
    let drift = i64::from(state.config.otp_drift_steps);
    let mut replayed = false;
    if well_formed(code, DIGITS) {
        let now_step = now / i64::from(PERIOD_SECONDS);
        for s in &seeds {
            for step in (now_step - drift)..=(now_step + drift) {
                let Ok(step_u) = u64::try_from(step) else {
                    continue;
                };
                let expected =
                    hotp(&s.seed, OtpHash::Sha1, DIGITS, step_u).map_err(|_| internal())?;
                if matches(&expected, code) {
                    if step > s.last_step
                        && otp::accept_step(&state.db, &s.enrollment_id, step).await?
                    {
                        return Ok(DeviceMatch::Accepted(DeviceSource::Enrollment(
                            s.enrollment_id.clone(),
                        )));
                    }
                    replayed = true;
                }
            }
        }
    }
    for t in &tokens {
        if !well_formed(code, t.digits) {
            continue;
        }
        match (t.counter, t.period) {
            (Some(counter), _) => {
                let look_ahead = i64::from(state.config.hotp_look_ahead);
                for c in counter..=counter.saturating_add(look_ahead) {
                    let Ok(c_u) = u64::try_from(c) else {
                        continue;
                    };
                    let expected =
                        hotp(&t.seed, t.algorithm.hash(), t.digits, c_u).map_err(|_| internal())?;
                    if matches(&expected, code) {
                        if otp::advance_counter(&state.db, &t.token_id, counter, c + 1).await? {
                            return Ok(DeviceMatch::Accepted(token_source(t)));
                        }
                        replayed = true;
                        break;
                    }
                }
            }
            (None, Some(period)) => {
                let step_now = now / i64::from(period.max(1));
                for step in (step_now - drift)..=(step_now + drift) {
                    let Ok(step_u) = u64::try_from(step) else {
                        continue;
                    };
                    let expected = hotp(&t.seed, t.algorithm.hash(), t.digits, step_u)
                        .map_err(|_| internal())?;
                    if matches(&expected, code) {
                        if step > t.last_step
                            && otp::accept_token_step(&state.db, &t.token_id, step).await?
                        {
                            return Ok(DeviceMatch::Accepted(token_source(t)));
                        }
                        replayed = true;
                    }
                }
            }
            (None, None) => {}
        }
    }
    Ok(if replayed {
        DeviceMatch::Replayed
    } else {
        DeviceMatch::NoMatch
    })
}

fn token_source(t: &OathToken) -> DeviceSource {
    DeviceSource::Token {
        token_id: t.token_id.clone(),
        kind: t.kind,
    }
}

/// The `pingid.authentication.*` attributes of a device passcode.
pub(crate) async fn device_attributes(
    state: &Ctx,
    source: &DeviceSource,
    accessing_ip: Option<&str>,
) -> Result<BTreeMap<String, Value>, ApiError> {
    let p = "pingid.authentication.";
    let mut attributes = BTreeMap::new();
    crate::domain::authentication::accessing_attributes(state, accessing_ip, &mut attributes);
    match source {
        DeviceSource::Enrollment(enrollment_id) => {
            attributes.insert(format!("{p}type"), json!("MOBILE_APP_OTP"));
            if let Some(device) = enrollments::by_id(&state.db, enrollment_id).await? {
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
        }
        DeviceSource::Token { kind, .. } => {
            attributes.insert(format!("{p}type"), json!(kind.authentication_type()));
            let amr = if *kind == tessera_protocol::api::OtpTokenKind::Yubikey {
                json!(["hwk", "otp"])
            } else {
                json!(["otp"])
            };
            attributes.insert(format!("{p}amr"), amr);
        }
    }
    Ok(attributes)
}

/// Checks a one-time passcode from one of the user's devices (the app, or a registered OATH
/// token).
#[utoipa::path(post, path = "/v1/users/{user_id}/otp/verify", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    request_body = VerifyOtpRequest,
    responses((status = 200, body = OtpVerified),
              (status = 400, description = "otp_invalid", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "no_device", body = tessera_protocol::error::ErrorBody),
              (status = 423, description = "otp_locked", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn verify(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<VerifyOtpRequest>,
) -> Result<Json<OtpVerified>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    let app = &auth.0.id;
    check_not_locked(&state, app, &user_id).await?;
    let code = normalize(&body.code);
    let source = match match_device_code(&state, app, &user_id, &code).await? {
        DeviceMatch::Accepted(source) => source,
        DeviceMatch::NoSources => {
            return Err(ApiError::new(
                ErrorCode::NoDevice,
                "the user has no device that makes passcodes",
            ));
        }
        DeviceMatch::Replayed => {
            return Err(refuse(
                &state,
                app,
                &user_id,
                "this passcode was already used; wait for the next one",
            )
            .await);
        }
        DeviceMatch::NoMatch => {
            return Err(refuse(&state, app, &user_id, "the passcode is wrong or expired").await);
        }
    };
    otp::reset_failures(&state.db, app, &user_id).await?;
    let attributes = device_attributes(&state, &source, None).await?;
    let (enrollment_id, token_id) = match source {
        DeviceSource::Enrollment(e) => (Some(e), None),
        DeviceSource::Token { token_id, .. } => (None, Some(token_id)),
    };
    tracing::info!(
        enrollment_id = ?enrollment_id,
        token_id = ?token_id,
        "one-time passcode accepted"
    );
    Ok(Json(OtpVerified {
        user_id,
        enrollment_id,
        token_id,
        attributes,
    }))
}

/// Clears the user's count of wrong passcodes (unlocks passcode sign-in).
#[utoipa::path(delete, path = "/v1/users/{user_id}/otp/failures", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    responses((status = 204, description = "Reset"), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn reset_failures(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    otp::reset_failures(&state.db, &auth.0.id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Answers a push authentication with a one-time passcode: the app's (or a registered token's)
/// when "use code" or OTP fallback is in force, or a backup code sent for it. Completes it as
/// approved with the passcode's attributes.
#[utoipa::path(post, path = "/v1/authentications/{authentication_id}/otp", tag = "customer",
    params(("authentication_id" = String, Path, description = "The authentication")),
    request_body = VerifyOtpRequest,
    responses((status = 200, body = AuthenticationStatus),
              (status = 400, description = "otp_invalid", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "authentication_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "otp_not_allowed, already_answered", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "authentication_expired", body = tessera_protocol::error::ErrorBody),
              (status = 423, description = "otp_locked", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn answer_authentication(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<VerifyOtpRequest>,
) -> Result<Json<AuthenticationStatus>, ApiError> {
    let record = crate::domain::authentication::load_for(&state, &auth.0.id, &id).await?;
    let now = time::now();
    crate::domain::authentication::require_pending(&record)?;
    let app = &auth.0.id;
    let user = &record.user_id;
    let app_code = record.otp_reason(now).is_some();
    let max_attempts = i64::from(state.config.backup_code_attempts.max(1));
    let challenges =
        otp_challenges::open_for_authentication(&state.db, &record.id, now, max_attempts).await?;
    if !app_code && challenges.is_empty() {
        return Err(ApiError::new(
            ErrorCode::OtpNotAllowed,
            "this authentication does not accept a passcode (no use-code, no OTP fallback in force, no backup code sent)",
        ));
    }
    check_not_locked(&state, app, user).await?;
    let code = normalize(&body.code);
    let mut attributes = None;
    let mut replayed = false;
    for c in &challenges {
        if super::backup::code_matches(c, &code) {
            if otp_challenges::mark_used(&state.db, &c.id, now, max_attempts).await? {
                attributes = Some(super::backup::channel_attributes(
                    &state,
                    c.channel,
                    record.accessing_ip.as_deref(),
                ));
            } else {
                replayed = true;
            }
            break;
        }
    }
    if attributes.is_none() && app_code && !replayed {
        match match_device_code(&state, app, user, &code).await? {
            DeviceMatch::Accepted(source) => {
                attributes =
                    Some(device_attributes(&state, &source, record.accessing_ip.as_deref()).await?);
            }
            DeviceMatch::Replayed => replayed = true,
            DeviceMatch::NoMatch | DeviceMatch::NoSources => {}
        }
    }
    let Some(attributes) = attributes else {
        for c in &challenges {
            otp_challenges::record_attempt(&state.db, &c.id).await?;
        }
        let message = if replayed {
            "this passcode was already used"
        } else {
            "the passcode is wrong or expired"
        };
        return Err(refuse(&state, app, user, message).await);
    };
    otp::reset_failures(&state.db, app, user).await?;
    let text = serde_json::to_string(&attributes).map_err(|_| internal())?;
    if !authentications::record_passcode_answer(&state.db, &record.id, &text, now).await? {
        // Answered or expired meanwhile: the passcode is spent, the outcome stands.
        let current = crate::domain::authentication::load_for(&state, &auth.0.id, &id).await?;
        crate::domain::authentication::require_pending(&current)?;
    }
    let current = crate::domain::authentication::load_for(&state, &auth.0.id, &id).await?;
    tracing::info!(authentication_id = %current.id, "authentication approved with a passcode");
    Ok(Json(current.status()))
}

const MAX_TOKENS_PER_USER: usize = 20;

/// Registers an OATH token whose seed is known (desktop OTP, hardware token, YubiKey in OATH
/// mode, authenticator app). The seed is never returned.
#[utoipa::path(post, path = "/v1/users/{user_id}/otp-tokens", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    request_body = RegisterOtpToken,
    responses((status = 201, body = OtpToken),
              (status = 400, description = "invalid_request", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn register_token(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<RegisterOtpToken>,
) -> Result<(StatusCode, Json<OtpToken>), ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    let invalid = |m: &str| ApiError::new(ErrorCode::InvalidRequest, m);
    let secret: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
        body.secret
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect(),
    );
    let seed = decode_base32(&secret).ok_or_else(|| invalid("the secret is not valid base32"))?;
    if !(16..=64).contains(&seed.len()) {
        return Err(invalid(
            "the secret must be 16 to 64 bytes (128 to 512 bits)",
        ));
    }
    let digits = body.digits.unwrap_or(6);
    if !(6..=8).contains(&digits) {
        return Err(invalid("digits must be 6, 7 or 8"));
    }
    let (period, counter) = match (body.period, body.counter) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give a period (TOTP) or a counter (HOTP), not both",
            ));
        }
        (None, Some(counter)) => (
            None,
            Some(i64::try_from(counter).map_err(|_| invalid("the counter is too large"))?),
        ),
        (period, None) => {
            let period = period.unwrap_or(30);
            if !(10..=300).contains(&period) {
                return Err(invalid("the period must be 10 to 300 seconds"));
            }
            (Some(period), None)
        }
    };
    if otp::tokens_for_user(&state.db, &auth.0.id, &user_id)
        .await?
        .len()
        >= MAX_TOKENS_PER_USER
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the user has the most tokens allowed",
        ));
    }
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let token = OathToken {
        token_id: format!(
            "otk_{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        kind: body.kind,
        seed,
        algorithm: body.algorithm,
        digits,
        period,
        counter,
        last_step: 0,
        created_at: time::now(),
    };
    otp::insert_token(&state.db, &auth.0.id, &user_id, &token).await?;
    tracing::info!(token_id = %token.token_id, kind = token.kind.as_str(), "OATH token registered");
    Ok((StatusCode::CREATED, Json(token.record())))
}

/// The user's OATH tokens (never their seeds).
#[utoipa::path(get, path = "/v1/users/{user_id}/otp-tokens", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    responses((status = 200, body = OtpTokenList), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn list_tokens(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
) -> Result<Json<OtpTokenList>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    let tokens = otp::tokens_for_user(&state.db, &auth.0.id, &user_id).await?;
    Ok(Json(OtpTokenList {
        tokens: tokens.iter().map(OathToken::record).collect(),
    }))
}

/// Removes one of the user's OATH tokens.
#[utoipa::path(delete, path = "/v1/users/{user_id}/otp-tokens/{token_id}", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user"),
           ("token_id" = String, Path, description = "The token")),
    responses((status = 204, description = "Removed"), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn remove_token(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path((user_id, token_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    if otp::delete_token(&state.db, &auth.0.id, &user_id, &token_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            ErrorCode::OtpTokenNotFound,
            "no such token for this user",
        ))
    }
}
